"""KD wrapper for two-stage detectors (detectron2 ``GeneralizedRCNN`` with standard RoI heads)."""

from contextlib import contextmanager
from typing import Dict, Tuple

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from torch import Tensor, nn

from ..outputs import DetectorOutputs, ModelSpec
from ..recorders import ForwardRecorder
from .base import KDMetaArchBase

__all__ = ["KDGeneralizedRCNN"]


@contextmanager
def _record_sampled_proposals(roi_heads: nn.Module, sink: list):
    """Record what ``roi_heads.label_and_sample_proposals`` returns, without calling it twice
    (it samples at random)."""
    original = roi_heads.label_and_sample_proposals

    def recording(*args, **kwargs):
        sampled = original(*args, **kwargs)
        sink.append(sampled)
        return sampled

    roi_heads.label_and_sample_proposals = recording
    try:
        yield sink
    finally:
        del roi_heads.label_and_sample_proposals  # back to the class's method


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
        with rec, _record_sampled_proposals(model.roi_heads, []) as sampled:
            features = model.backbone(images.tensor)
            proposals, proposal_losses = model.proposal_generator(images, features, gt_instances)
            _, detector_losses = model.roi_heads(images, features, proposals, gt_instances)
        objectness, anchor_deltas = rec["rpn_head"][0]
        cls_logits, box_deltas = rec["box_predictor"][0]
        pg = model.proposal_generator
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
        )
        return {**detector_losses, **proposal_losses}, out

    def teacher_step(self, batched_inputs, student: DetectorOutputs) -> DetectorOutputs:
        model = self.teacher
        images = model.preprocess_image(batched_inputs)
        has_bottom_up = hasattr(model.backbone, "bottom_up")
        outputs = {"bottom_up": "backbone.bottom_up"} if has_bottom_up else {}
        with ForwardRecorder(model, outputs=outputs) as rec:
            features = model.backbone(images.tensor)
        pg, roi = model.proposal_generator, model.roi_heads
        rpn_in = [features[f] for f in pg.in_features]
        objectness, anchor_deltas = pg.rpn_head(rpn_in)
        boxes = [p.proposal_boxes for p in student.proposals]
        box_features = roi.box_head(
            roi.box_pooler([features[f] for f in roi.box_in_features], boxes)
        )
        cls_logits, box_deltas = roi.box_predictor(box_features)
        return DetectorOutputs(
            images=images,
            backbone=rec["bottom_up"][0] if has_bottom_up else features,
            features=features,
            head_in_features=list(pg.in_features),
            towers={"box_head": [box_features]},
            anchors=pg.anchor_generator(rpn_in),
            rpn={"objectness_logits": objectness, "anchor_deltas": anchor_deltas},
            roi={"cls_logits": cls_logits, "box_deltas": box_deltas},
        )
