"""The distiller registry and base class.

A distiller is an ``nn.Module`` (it may own trainable adapters) that receives the captured
teacher and student tensors (:class:`~kd_det2.modeling.outputs.DetectorOutputs`) and the GT
instances of a training step and returns ``{"loss_kd_<what>": scalar tensor}``. It is built from
the config and the two models' :class:`~kd_det2.modeling.outputs.ModelSpec`, and checks there,
before training starts, that the models have what it needs.
"""

from typing import Dict, Iterable, List

import torch
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..outputs import DetectorOutputs, ModelSpec

__all__ = [
    "KD_DISTILLER_REGISTRY",
    "Distiller",
    "build_distillers",
    "cat_dense_levels",
    "check_features",
    "registered_distillers",
]

KD_DISTILLER_REGISTRY = Registry("KD_DISTILLER")
KD_DISTILLER_REGISTRY.__doc__ = """
Registry of distillers. A registered class is built as ``cls(cfg, student_spec, teacher_spec)``
(detectron2 ``@configurable`` with ``from_config(cls, cfg, student, teacher)``).
"""


def registered_distillers() -> List[str]:
    """Sorted names of all registered distillers."""
    return sorted(name for name, _ in KD_DISTILLER_REGISTRY)


def cat_dense_levels(levels: List[Tensor], k: int) -> Tensor:
    """Per-level dense head outputs (N, A*k, Hi, Wi) -> (N, R, k), R = sum_i Hi*Wi*A, in
    detectron2's anchor order (level, y, x, anchor), the order of ``DetectorOutputs.anchors``."""
    return torch.cat([permute_to_N_HWA_K(x, k) for x in levels], dim=1)


def check_features(
    names: Iterable[str], student: ModelSpec, teacher: ModelSpec, where: str, attr: str
) -> None:
    """Raise a ValueError naming ``where`` (a config key) if a feature is missing in a model.

    Args:
        names: feature names the distiller needs.
        attr: "feature_shapes" (neck levels) or "backbone_shapes" (bottom-up stages).
    """
    for role, spec in (("student", student), ("teacher", teacher)):
        available = getattr(spec, attr)
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"{where} needs feature levels {missing}, which the {role} ({spec.arch}) does not "
                f"have; it has {sorted(available)}. Change {where} or the {role}'s backbone."
            )


class Distiller(nn.Module):
    """Base class of all distillers.

    Subclasses implement :meth:`forward` and return only real losses, each named
    ``loss_kd_<what>`` and already multiplied by its configured weight. Statistics go to the
    event storage (``get_event_storage().put_scalar``), not into the returned dict.
    """

    #: "dense", "rcnn" or "any": the detector kinds the distiller supports.
    supported_kinds = ("dense", "rcnn")

    def forward(
        self,
        teacher: DetectorOutputs,
        student: DetectorOutputs,
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        """
        Args:
            teacher: tensors of the frozen teacher (no grad), on the student's inputs.
            student: tensors of the student (with grad).
            gt_instances: per image, ``gt_boxes`` (Gi, 4) XYXY in input-image pixels and
                ``gt_classes`` (Gi,).

        Returns:
            dict of scalar losses named ``loss_kd_*``.
        """
        raise NotImplementedError  # abstract


def build_distillers(
    cfg, names: List[str], student: ModelSpec, teacher: ModelSpec
) -> Dict[str, Distiller]:
    """Build the distillers named in ``MODEL.KD.DISTILLERS``.

    Raises:
        KeyError: an unknown name, with the list of registered ones.
        ValueError: a distiller that does not support the detector kind, or a repeated name.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"MODEL.KD.DISTILLERS has a repeated name: {list(names)}")
    out = {}
    for name in names:
        if name not in KD_DISTILLER_REGISTRY:
            raise KeyError(
                f"Unknown distiller '{name}' in MODEL.KD.DISTILLERS. Registered distillers: "
                f"{registered_distillers()}."
            )
        cls = KD_DISTILLER_REGISTRY.get(name)
        if student.kind not in cls.supported_kinds:
            raise ValueError(
                f"Distiller '{name}' supports {cls.supported_kinds} detectors, but the student "
                f"{student.arch} is '{student.kind}'."
            )
        out[name] = cls(cfg, student, teacher)
    return out
