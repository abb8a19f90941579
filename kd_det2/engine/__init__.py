"""Training: trainer, checkpointer, DDP helper, timed train-and-evaluate runs."""

from .checkpoint import KDCheckpointer, is_kd_checkpoint, unwrap
from .runs import TimedKDTrainer, train_and_evaluate
from .trainer import (
    KDTrainer,
    create_ddp_model,
    has_compiled_ops,
    prepare_datasets,
    run_cli,
    without_teacher,
)

__all__ = [
    "KDCheckpointer",
    "KDTrainer",
    "TimedKDTrainer",
    "create_ddp_model",
    "has_compiled_ops",
    "is_kd_checkpoint",
    "prepare_datasets",
    "run_cli",
    "train_and_evaluate",
    "unwrap",
    "without_teacher",
]
