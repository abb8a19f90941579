"""The distiller registry and base class.

A distiller is an ``nn.Module`` (it may own trainable adapters) that receives the captured
teacher and student tensors (:class:`~kd_det2.modeling.outputs.DetectorOutputs`) and the GT
instances of a training step and returns ``{"loss_kd_<what>": scalar tensor}``. It is built from
the config and the two models' :class:`~kd_det2.modeling.outputs.ModelSpec`, and checks there,
before training starts, that the models have what it needs.

What a distiller declares (class attributes, checked for every registered distiller by the
contract tests in ``tests/modeling/test_distiller_contract.py``):

* ``supported_kinds`` / ``supported_archs``: the detector families it supports; every other
  family is refused when the model is built, with the distiller's name in the message;
* ``needs``: what the KD wrapper must compute for it beyond the default capture, so that no other
  method pays for it (the wrapper takes the union over its distillers):

  - ``"teacher_leaves"``: the teacher's neck outputs as leaf tensors that require grad (the
    backbone runs without a graph, the head's captured outputs carry none, the teacher's
    parameters stay frozen), for losses the distiller computes itself from them with
    ``DetectorOutputs.detection_loss_fn`` (e.g. against targets other than the GT);
  - ``"teacher_losses"``: the above, plus the teacher's detection losses against the GT in the
    graph of those leaves. Two-stage teachers are scored on the student's sampled anchors
    (``DetectorOutputs.rpn_assignment``) and proposals, so that both models' losses are the same
    function of their outputs; see :class:`~kd_det2.modeling.outputs.DetectorOutputs`.

  The class attribute lists everything a distiller of the class may need; an instance narrows
  it from its settings (GKD: ``"teacher_losses"`` for maps against the GT, ``"teacher_leaves"``
  for maps against pseudo targets, nothing when only its BMFI terms are on);
* ``vanishing_terms``: the loss names that are zero when teacher and student compute the same
  outputs (terms that measure a teacher-student difference);
* ``level_key``: the config key listing the feature levels or stages it reads, or None when it
  reads the levels of the detectors' heads (which must then be the same in both).
"""

from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

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
    "check_same_head_levels",
    "distiller_needs",
    "registered_distillers",
]

#: every value a distiller may put in its ``needs``
KNOWN_NEEDS = frozenset({"teacher_leaves", "teacher_losses"})

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


def check_same_head_levels(name: str, student: ModelSpec, teacher: ModelSpec) -> None:
    """Raise a ValueError naming distiller ``name`` unless the teacher's and the student's heads
    (dense heads; the RPN for two-stage models) read levels of the same strides and have the same
    anchors per location, so that their per-level predictions correspond one to one."""
    strides = [
        [spec.feature_shapes[f].stride for f in spec.head_in_features]
        for spec in (student, teacher)
    ]
    if strides[0] != strides[1]:
        raise ValueError(
            f"{name} needs the same head levels in teacher and student: the teacher's head reads "
            f"{teacher.head_in_features} (strides {strides[1]}), the student's "
            f"{student.head_in_features} (strides {strides[0]}). Align the heads' IN_FEATURES."
        )
    if student.num_anchors != teacher.num_anchors:
        raise ValueError(
            f"{name} needs the same anchors per location in teacher and student "
            f"({teacher.num_anchors} vs {student.num_anchors}): align MODEL.ANCHOR_GENERATOR."
        )


class Distiller(nn.Module):
    """Base class of all distillers.

    Subclasses implement :meth:`forward` and return only real losses, each named
    ``loss_kd_<what>`` and already multiplied by its configured weight. Statistics go to the
    event storage (``get_event_storage().put_scalar``), not into the returned dict.
    """

    #: the detector kinds the distiller supports: "dense" (one-stage) and/or "rcnn" (two-stage).
    supported_kinds: Tuple[str, ...] = ("dense", "rcnn")
    #: detector classes (``ModelSpec.arch``: "FCOS", "RetinaNet", "GFL", "GeneralizedRCNN") the
    #: distiller supports, when narrower than ``supported_kinds``; None: every detector of those
    #: kinds that has what it needs.
    supported_archs: Optional[Tuple[str, ...]] = None
    #: what the wrapper must compute for this distiller beyond the default capture (a subset of
    #: ``KNOWN_NEEDS``; an instance may narrow it); see the module docstring.
    needs: FrozenSet[str] = frozenset()
    #: loss names that are zero when teacher and student compute the same outputs.
    vanishing_terms: Tuple[str, ...] = ()
    #: the yacs key listing the levels or stages the distiller reads (e.g.
    #: "MODEL.KD.FITNET.IN_FEATURES"); None when it reads the levels of the detectors' heads.
    level_key: Optional[str] = None

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
        ValueError: a distiller that does not support the detector kind or class, or a repeated
            name. Errors raised by a distiller's own checks are re-raised with its name in front.
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
        archs = cls.supported_archs
        if archs is not None and not (student.is_a(archs) and teacher.is_a(archs)):
            raise ValueError(
                f"Distiller '{name}' supports the detectors {list(archs)}; the student is "
                f"{student.arch} and the teacher {teacher.arch}."
            )
        unknown = set(cls.needs) - KNOWN_NEEDS
        if unknown:
            raise ValueError(f"Distiller '{name}' declares unknown needs {sorted(unknown)}")
        try:
            out[name] = cls(cfg, student, teacher)
        except (ValueError, KeyError, TypeError) as e:
            message = str(e.args[0]) if e.args else str(e)
            if name in message:
                raise
            raise type(e)(f"Distiller '{name}': {message}") from e
        if not set(out[name].needs) <= set(cls.needs):
            raise ValueError(
                f"Distiller '{name}': an instance may narrow its class's needs "
                f"{sorted(cls.needs)}, not add {sorted(set(out[name].needs) - set(cls.needs))}"
            )
    return out


def distiller_needs(distillers: Iterable[Distiller]) -> FrozenSet[str]:
    """The union of the ``needs`` of ``distillers``."""
    out: FrozenSet[str] = frozenset()
    for d in distillers:
        out = out | frozenset(d.needs)
    return out
