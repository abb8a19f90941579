"""Checkpointing for KD wrappers: atomic writes, student-only init weights, no teacher inside."""

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel

from ..modeling.meta_arch.base import KDMetaArchBase

__all__ = ["KDCheckpointer", "is_kd_checkpoint", "unwrap"]

_STUDENT = "student."


def unwrap(model):
    """The module inside (Distributed)DataParallel, or ``model`` itself."""
    wrappers = (DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def is_kd_checkpoint(state_dict: dict) -> bool:
    """True for the state dict of a KD wrapper (keys ``student.*``), False for a plain model's."""
    return any(k.startswith(_STUDENT) or k.startswith("module." + _STUDENT) for k in state_dict)


class KDCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` for models that may be KD wrappers.

    * ``save`` writes to a temporary file and renames it (and ``last_checkpoint`` likewise), so an
      interrupted write never leaves a truncated checkpoint behind.
    * Loading a KD checkpoint (``student.*`` keys, e.g. for ``--resume``) restores the whole
      wrapper. Loading a plain detector checkpoint (``MODEL.WEIGHTS``: ImageNet backbones, model
      zoo detectors) loads into the student only, so suffix matching can never put those weights
      into the teacher.
    * The teacher is never saved (see :class:`KDMetaArchBase`) and its absence is not reported as
      missing keys; distiller adapters in a checkpoint are ignored by a wrapper without them
      (e.g. ``--eval-only``).
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename), "w")

    def _load_model(self, checkpoint):
        model = unwrap(self.model)
        if not isinstance(model, KDMetaArchBase):
            return super()._load_model(checkpoint)
        state = checkpoint["model"]
        if not is_kd_checkpoint(state):
            return self._load_into(model.student, checkpoint)
        if not len(model.distillers):
            for k in [k for k in state if k.startswith(("distillers.", "module.distillers."))]:
                del state[k]
        return super()._load_model(checkpoint)

    def _load_into(self, module, checkpoint):
        full = self.model
        self.model = module
        try:
            return super()._load_model(checkpoint)
        finally:
            self.model = full


def _atomic_write(path: str, write, mode: str) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it.

    If anything fails before the rename, the temporary file is removed and the error re-raised:
    ``path`` keeps its previous content and no partial file is left behind.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
