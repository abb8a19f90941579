"""Training: trainer, checkpointer, DDP helper, timed train-and-evaluate runs."""

from .checkpoint import KDCheckpointer, is_kd_checkpoint, unwrap
from .runs import TimedKDTrainer, train_and_evaluate
from .trainer import (
    KDTrainer,
    check_num_classes,
    create_ddp_model,
    has_compiled_ops,
    num_classes_setting,
    prepare_datasets,
    run_cli,
    without_teacher,
)

__all__ = [
    "KDCheckpointer",
    "KDTrainer",
    "TimedKDTrainer",
    "check_num_classes",
    "create_ddp_model",
    "has_compiled_ops",
    "is_kd_checkpoint",
    "num_classes_setting",
    "prepare_datasets",
    "run_cli",
    "train_and_evaluate",
    "unwrap",
    "without_teacher",
]
