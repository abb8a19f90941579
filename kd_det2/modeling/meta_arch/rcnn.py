"""KD wrapper for two-stage detectors (detectron2 ``GeneralizedRCNN`` with standard RoI heads)."""

import contextlib
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.logger import log_first_n
from torch import Tensor, nn

from ..outputs import DetectionLossFn, DetectorOutputs, ModelSpec
from ..recorders import ForwardRecorder, record_calls
from ..stages import stage_order
from .base import KDMetaArchBase

__all__ = ["KDGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class KDGeneralizedRCNN(KDMetaArchBase):
    """Distil a two-stage detector (``MODEL.KD.STUDENT_META_ARCHITECTURE: "GeneralizedRCNN"``).

    Captured per step: bottom-up stages and neck levels of both models; RPN head outputs and
    anchors of both; the student's sampled proposals, its box-head features and RoI logits; and
    the teacher's box-head features and RoI logits on the student's sampled proposals (the
    teacher's pooler, box head and predictor are run on the teacher's own features).
    """

    kind = "rcnn"

    @classmethod
    def describe(cls, model: nn.Module, input_format: str) -> ModelSpec:
        if not isinstance(model, GeneralizedRCNN) or model.proposal_generator is None:
            raise TypeError(
                f"KDGeneralizedRCNN needs GeneralizedRCNN models with an RPN, got "
                f"{type(model).__name__} (use KDDenseDetector for one-stage detectors)."
            )
        roi = model.roi_heads
        if not all(
            isinstance(getattr(roi, a, None), nn.Module) for a in ("box_pooler", "box_head")
        ):
            raise TypeError(
                f"{type(roi).__name__} is not supported: KDGeneralizedRCNN needs standard RoI "
                "heads with one box_pooler and one box_head (cascade heads are not supported)."
            )
        stages, levels = cls.backbone_shapes(model)
        pg = model.proposal_generator
        return ModelSpec(
            kind="rcnn",
            arch=type(model).__name__,
            num_classes=roi.num_classes,
            backbone_shapes=stages,
            feature_shapes=levels,
            head_in_features=list(pg.in_features),
            tower_channels={"box_head": roi.box_head.output_shape.channels},
            num_anchors=pg.anchor_generator.num_cell_anchors[0],
            input_format=input_format,
            arch_bases=tuple(c.__name__ for c in type(model).__mro__),
            stage_order=stage_order(model),
        )

    def student_step(
        self, batched_inputs, gt_instances
    ) -> Tuple[Dict[str, Tensor], DetectorOutputs]:
        model = self.student
        images = model.preprocess_image(batched_inputs)
        outputs = {
            "bottom_up": "backbone.bottom_up",
            "rpn_head": "proposal_generator.rpn_head",
            "box_head": "roi_heads.box_head",
            "box_predictor": "roi_heads.box_predictor",
        }
        if not hasattr(model.backbone, "bottom_up"):
            del outputs["bottom_up"]
        rec = ForwardRecorder(model, outputs=outputs)
        pg = model.proposal_generator
        anchor_recording = record_calls(pg, "label_and_sample_anchors")
        with rec, record_calls(model.roi_heads, "label_and_sample_proposals") as sampled:
            with anchor_recording as anchor_samples:
                features = model.backbone(images.tensor)
                proposals, proposal_losses = pg(images, features, gt_instances)
            _, detector_losses = model.roi_heads(images, features, proposals, gt_instances)
        objectness, anchor_deltas = rec["rpn_head"][0]
        cls_logits, box_deltas = rec["box_predictor"][0]
        out = DetectorOutputs(
            images=images,
            backbone=rec["bottom_up"][0] if "bottom_up" in outputs else features,
            features=features,
            head_in_features=list(pg.in_features),
            towers={"box_head": [rec["box_head"][0]]},
            anchors=pg.anchor_generator([features[f] for f in pg.in_features]),
            rpn={"objectness_logits": objectness, "anchor_deltas": anchor_deltas},
            roi={"cls_logits": cls_logits, "box_deltas": box_deltas},
            proposals=sampled[0],
            rpn_assignment=anchor_samples[0],
            model=model,
            detection_loss_fn=_detection_loss_fn(model, sampled[0]),
        )
        losses = {**detector_losses, **proposal_losses}
        out.losses = dict(losses)
        return losses, out

    def teacher_step(
        self,
        batched_inputs,
        student: DetectorOutputs,
        gt_instances: Optional[List[Instances]] = None,
        leaf_features: bool = False,
    ) -> DetectorOutputs:
        """The teacher's captured tensors on the student's sampled proposals (neck outputs as
        leaves with ``leaf_features``); with ``gt_instances``, also its detection losses (RPN on
        the student's sampled anchors, and RoI heads on the student's sampled proposals),
        differentiable with respect to its neck features (leaf tensors); the other captured
        tensors are then detached."""
        model = self.teacher
        with_losses = gt_instances is not None
        leaves = leaf_features or with_losses
        images = model.preprocess_image(batched_inputs)
        has_bottom_up = hasattr(model.backbone, "bottom_up")
        outputs = {"bottom_up": "backbone.bottom_up"} if has_bottom_up else {}
        with ForwardRecorder(model, outputs=outputs) as rec:
            with torch.no_grad() if leaves else contextlib.nullcontext():
                features = model.backbone(images.tensor)
        if leaves:
            features = {k: v.detach().requires_grad_() for k, v in features.items()}
        loss_fn = _detection_loss_fn(model, student.proposals)
        # one pass of the RPN head and the RoI box head (on the student's sampled proposals),
        # with a graph only when the losses need it; the captured outputs are detached then
        heads = _head_outputs(model, features, [p.proposal_boxes for p in student.proposals])
        losses = {}
        if with_losses:
            losses = _losses_from_heads(
                model, heads, student.proposals, gt_instances, student.rpn_assignment
            )
            heads = {k: _detached(v) for k, v in heads.items()}
        out = self._teacher_outputs(model, images, features, heads)
        out.backbone = rec["bottom_up"][0] if has_bottom_up else features
        out.losses, out.detection_loss_fn = losses, loss_fn
        return out

    @staticmethod
    def _teacher_outputs(model, images: ImageList, features, heads: dict) -> DetectorOutputs:
        """The teacher's captures from its head outputs (:func:`_head_outputs`)."""
        return DetectorOutputs(
            images=images,
            backbone=features,
            features=features,
            head_in_features=list(model.proposal_generator.in_features),
            towers={"box_head": [heads["box_features"]]},
            anchors=heads["anchors"],
            rpn={"objectness_logits": heads["objectness"], "anchor_deltas": heads["anchor_deltas"]},
            roi={"cls_logits": heads["cls_logits"], "box_deltas": heads["box_deltas"]},
            model=model,
        )


def _detached(x):
    """``x`` (a tensor or a list of them) without its graph; other values as they are."""
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, list) and x and isinstance(x[0], Tensor):
        return [t.detach() for t in x]
    return x


def _head_outputs(model, features: Dict[str, Tensor], boxes: List[Boxes]) -> dict:
    """One pass of the RPN head and of the RoI box head on the given proposal ``boxes``.

    Returns:
        ``anchors`` (per level :class:`Boxes`), ``objectness`` [(N, A, Hi, Wi)],
        ``anchor_deltas`` [(N, A*B, Hi, Wi)], ``box_features`` (R, D), ``cls_logits`` (R, K+1),
        ``box_deltas`` (R, 4*K) or (R, 4); R the proposals of all images.
    """
    pg, roi = model.proposal_generator, model.roi_heads
    rpn_in = [features[f] for f in pg.in_features]
    objectness, anchor_deltas = pg.rpn_head(rpn_in)
    box_features = roi.box_head(roi.box_pooler([features[f] for f in roi.box_in_features], boxes))
    cls_logits, box_deltas = roi.box_predictor(box_features)
    return {
        "anchors": pg.anchor_generator(rpn_in),
        "objectness": objectness,
        "anchor_deltas": anchor_deltas,
        "box_features": box_features,
        "cls_logits": cls_logits,
        "box_deltas": box_deltas,
    }


def _rpn_losses(
    pg: nn.Module,
    heads: dict,
    targets: List[Instances],
    samples: Optional[Tuple[List[Tensor], List[Tensor]]] = None,
):
    """detectron2 RPN losses of ``pg`` from its head outputs (:func:`_head_outputs`), against
    ``targets``: on the anchors of ``samples`` (what a ``label_and_sample_anchors`` call returned
    for these targets, e.g. the student's) when given and with as many anchors, else on anchors
    sampled as the RPN does in training."""
    anchors = heads["anchors"]
    objectness = [x.permute(0, 2, 3, 1).flatten(1) for x in heads["objectness"]]  # (N, Hi*Wi*A)
    box_dim = pg.anchor_generator.box_dim
    deltas = [  # (N, A*B, Hi, Wi) -> (N, Hi*Wi*A, B)
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
        .permute(0, 3, 4, 1, 2)
        .flatten(1, -2)
        for x in heads["anchor_deltas"]
    ]
    num_anchors = sum(len(a) for a in anchors)
    if samples is not None and len(samples[0][0]) == num_anchors:
        gt_labels, gt_boxes = samples
    else:
        if samples is not None:
            log_first_n(
                logging.WARNING,
                f"The teacher's RPN has {num_anchors} anchors per image, the student's "
                f"{len(samples[0][0])}: the teacher's RPN loss samples its own anchors, so the "
                "two models' detection losses are not taken on the same anchors.",
                n=1,
                name="kd_det2",
            )
        gt_labels, gt_boxes = pg.label_and_sample_anchors(anchors, targets)
    return pg.losses(anchors, objectness, gt_labels, deltas, gt_boxes)


def _relabel_proposals(roi: nn.Module, proposals: List[Instances], targets: List[Instances]):
    """The sampled proposal boxes, labelled against ``targets`` with the RoI heads' matcher
    (deterministic: no sampling); unmatched and ignored proposals become background."""
    out = []
    k = roi.num_classes
    for p, t in zip(proposals, targets):
        q = Instances(p.image_size, proposal_boxes=p.proposal_boxes)
        boxes = p.proposal_boxes.tensor
        if len(t):
            idx, lab = roi.proposal_matcher(pairwise_iou(t.gt_boxes, p.proposal_boxes))
            cls = t.gt_classes[idx].clone()
            cls[lab <= 0] = k
            q.gt_classes, q.gt_boxes = cls, t.gt_boxes[idx]
        else:
            q.gt_classes = torch.full((len(p),), k, dtype=torch.long, device=boxes.device)
            q.gt_boxes = Boxes(boxes.new_zeros(len(p), 4))
        out.append(q)
    return out


def _losses_from_heads(
    model,
    heads: dict,
    proposals: List[Instances],
    targets: List[Instances],
    rpn_samples: Optional[Tuple[List[Tensor], List[Tensor]]] = None,
) -> Dict[str, Tensor]:
    """RPN losses (on ``rpn_samples`` when given, see :func:`_rpn_losses`) + RoI box losses on
    the sampled ``proposals`` relabelled against the targets, from the head outputs of
    :func:`_head_outputs` on those proposals."""
    roi = model.roi_heads
    labelled = _relabel_proposals(roi, proposals, targets)
    return {
        **_rpn_losses(model.proposal_generator, heads, targets, rpn_samples),
        **roi.box_predictor.losses((heads["cls_logits"], heads["box_deltas"]), labelled),
    }


def _detection_losses(
    model,
    proposals: List[Instances],
    features: Dict[str, Tensor],
    targets: List[Instances],
    rpn_samples: Optional[Tuple[List[Tensor], List[Tensor]]] = None,
) -> Dict[str, Tensor]:
    """:func:`_losses_from_heads` of one head pass on ``features``."""
    heads = _head_outputs(model, features, [p.proposal_boxes for p in proposals])
    return _losses_from_heads(model, heads, proposals, targets, rpn_samples)


def _detection_loss_fn(model, proposals: List[Instances]) -> DetectionLossFn:
    """RPN losses + RoI box losses on the student's sampled ``proposals`` (relabelled against
    the targets), from given neck features."""

    def detection_losses(features: Dict[str, Tensor], targets: List[Instances]):
        return _detection_losses(model, proposals, features, targets)

    return detection_losses
