"""Training: trainer, checkpointer, DDP helper."""

from .checkpoint import KDCheckpointer, is_kd_checkpoint, unwrap
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
    "create_ddp_model",
    "has_compiled_ops",
    "is_kd_checkpoint",
    "prepare_datasets",
    "run_cli",
    "unwrap",
    "without_teacher",
]
