"""Data passed from the KD meta-architectures to the distillers.

Notation: N images, L levels, level i of size Hi x Wi, A anchors per location, K foreground
classes, C channels, R sampled proposals over the whole batch.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

#: ``fn(features, targets) -> losses``: a detector's detection losses recomputed from neck
#: features ``{"p3": (N, C, Hi, Wi), ...}`` against per-image target Instances (``gt_boxes``,
#: ``gt_classes``), differentiable with respect to ``features``.
DetectionLossFn = Callable[[Dict[str, Tensor], List[Instances]], Dict[str, Tensor]]

__all__ = ["DetectionLossFn", "DetectorOutputs", "ModelSpec"]


@dataclass
class DetectorOutputs:
    """Tensors captured during one training-step forward of a detector.

    The teacher's are computed under ``torch.no_grad()`` and on the student's inputs (so images,
    anchors and, for two-stage models, the RoI boxes correspond one to one).

    Attributes:
        images: the preprocessed, padded batch the model saw; ``images.tensor`` is (N, 3, H, W).
        backbone: bottom-up stages, e.g. ``{"res2": (N, C, H/4, W/4), ..., "res5": ...}``.
        features: neck (FPN) outputs, e.g. ``{"p2": ..., "p7": ...}``, each (N, C, Hi, Wi).
        head_in_features: the feature names the dense head (or the RPN) consumes, high to low
            resolution: the order of every per-level list below.
        towers: dense heads: ``{"cls": [...], "reg": [...]}``, the outputs of the classification
            and regression towers (after the last tower conv and activation, before the final
            predictors), one (N, C, Hi, Wi) tensor per level. Two-stage: ``{"box_head": [(R, C)]}``.
        tower_blocks: dense heads: the output of every block (conv -> [norm] -> activation) of
            each tower, ``{"cls": [block 0 per-level list, block 1 ..., ...], "reg": [...]}``;
            ``tower_blocks["cls"][-1]`` is ``towers["cls"]``.
        predictions: dense heads: ``{"cls_logits": [(N, A*K, Hi, Wi)], "box_deltas":
            [(N, A*4, Hi, Wi)]}`` plus detector extras (FCOS: ``"ctrness"`` (N, 1, Hi, Wi)).
            GFL: ``"box_deltas"`` are the box-edge distribution logits, (N, 4*(n+1), Hi, Wi),
            decoded by the model's ``DistributionBox2BoxTransform``.
        anchors: dense heads and RPN: one :class:`Boxes` of (Hi*Wi*A, 4) per level.
        rpn: two-stage: ``{"objectness_logits": [(N, A, Hi, Wi)], "anchor_deltas":
            [(N, A*4, Hi, Wi)]}``.
        roi: two-stage, on the student's sampled proposals: ``{"cls_logits": (R, K+1),
            "box_deltas": (R, 4*K) or (R, 4)}``.
        proposals: two-stage, student only: the sampled proposals, one :class:`Instances` per
            image with ``proposal_boxes`` and ``gt_classes`` (K = background).
        rpn_assignment: two-stage, student only: the RPN's anchor sampling of this step, as its
            ``label_and_sample_anchors`` returned it: (per image (R,) labels, 1 sampled positive,
            0 sampled negative, -1 not sampled; per image (R, 4) matched GT boxes). The
            teacher's RPN loss (when its losses are computed) is taken on these anchors, so that
            both models' detection losses are the same function of their outputs.
        losses: the detector's detection losses of this step, in the graph of ``features``.
            Student: the losses the trainer optimises. Teacher: empty, unless a distiller
            declares ``needs = {"teacher_losses"}`` (see :class:`~kd_det2.modeling.distillers.
            Distiller`); then they are computed against the GT (two-stage: on the student's
            sampled anchors and proposals), ``features`` are leaf tensors
            that require grad (the backbone ran without a graph) and the teacher's parameters
            still get no gradient. ``"teacher_leaves"`` gives the leaf ``features`` without the
            losses.
        assignment: dense students: the detector's own label assignment of this step, recorded
            from its ``label_anchors`` (not recomputed): ``{"gt_labels": (N, R) long, K for
            background and -1 for ignored anchors, "gt_index": (N, R) long, the index of the
            matched GT in ``gt_instances[i]`` for foreground anchors, -1 elsewhere}``, R the
            anchors of all levels in ``anchors`` order. None for the teacher and two-stage models.
        model: the detector that produced these outputs (a reference, not a copy), for
            distillers that run parts of it (e.g. a student feature through the teacher's next
            stage). The teacher's is frozen: its parameters never require grad.
        detection_loss_fn: :data:`DetectionLossFn` of this detector on this batch (its head, or
            RPN + RoI heads on the student's sampled proposals), e.g. for losses against targets
            other than the GT. Runs the head again on the features it is given.
    """

    images: ImageList
    backbone: Dict[str, Tensor]
    features: Dict[str, Tensor]
    head_in_features: List[str]
    towers: Dict[str, List[Tensor]] = field(default_factory=dict)
    tower_blocks: Dict[str, List[List[Tensor]]] = field(default_factory=dict)
    predictions: Dict[str, List[Tensor]] = field(default_factory=dict)
    anchors: Optional[List[Boxes]] = None
    rpn: Dict[str, List[Tensor]] = field(default_factory=dict)
    roi: Dict[str, Tensor] = field(default_factory=dict)
    proposals: Optional[List[Instances]] = None
    rpn_assignment: Optional[Tuple[List[Tensor], List[Tensor]]] = None
    losses: Dict[str, Tensor] = field(default_factory=dict)
    assignment: Optional[Dict[str, Tensor]] = None
    model: Optional[nn.Module] = field(default=None, repr=False)
    detection_loss_fn: Optional[DetectionLossFn] = field(default=None, repr=False)

    def level_features(self) -> List[Tensor]:
        """The neck features the head consumes, as a per-level list."""
        return [self.features[f] for f in self.head_in_features]


@dataclass
class ModelSpec:
    """Static description of a detector, used to build and check distillers before training.

    Attributes:
        kind: "dense" (one-stage) or "rcnn" (two-stage).
        arch: class name of the detector, e.g. "FCOS".
        num_classes: K, foreground classes.
        backbone_shapes: bottom-up stage name -> ShapeSpec (channels, stride).
        feature_shapes: neck output name -> ShapeSpec.
        head_in_features: features consumed by the dense head (two-stage: by the RPN).
        tower_channels: tower name -> C (dense: "cls", "reg"; two-stage: "box_head").
        num_anchors: A, anchors per location of the dense head (two-stage: of the RPN).
        input_format: "BGR" or "RGB".
        box2box_transform: dense heads: the model's transform between anchors and box deltas
            (``apply_deltas(deltas (R, 4), anchors (R, 4)) -> boxes (R, 4)``), to decode its
            predictions; None for two-stage models.
        arch_bases: the names of the detector's class and of all its base classes (so that a
            subclass of GFL counts as a GFL).
        stage_order: the names of the bottom-up stages the backbone exposes to be run one at a
            time (see :mod:`kd_det2.modeling.stages`), in order, including those that are not
            outputs; empty when the backbone does not expose its stages.
    """

    kind: str
    arch: str
    num_classes: int
    backbone_shapes: Dict[str, ShapeSpec]
    feature_shapes: Dict[str, ShapeSpec]
    head_in_features: List[str]
    tower_channels: Dict[str, int]
    num_anchors: int
    input_format: str = "BGR"
    box2box_transform: Any = None
    arch_bases: Tuple[str, ...] = ()
    stage_order: Tuple[str, ...] = ()

    def is_a(self, archs: Iterable[str]) -> bool:
        """Whether the detector is (a subclass of) one of the detector classes ``archs``."""
        names = set(self.arch_bases) | {self.arch}
        return any(a in names for a in archs)
