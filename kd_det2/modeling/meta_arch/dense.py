"""KD wrapper for one-stage dense detectors (detectron2 ``DenseDetector``: RetinaNet, FCOS, ...)."""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from ..outputs import DetectionLossFn, DetectorOutputs, ModelSpec
from ..recorders import ForwardRecorder, get_submodule, record_calls
from ..stages import stage_order
from .base import KDMetaArchBase

__all__ = ["KDDenseDetector", "PREDICTION_NAMES", "TOWER_PATHS", "assignment_from_matches"]

#: names of the lists a dense head returns, by position (FCOS adds centerness).
PREDICTION_NAMES = ("cls_logits", "box_deltas", "ctrness")
#: tower name -> submodule path whose per-level outputs are the head-tower features.
TOWER_PATHS = {"cls": "head.cls_subnet", "reg": "head.bbox_subnet"}


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU)


def _block_ends(tower: nn.Module) -> List[str]:
    """Names of the children of a tower that end its blocks (conv -> [norm] -> activation)."""
    return [n for n, m in tower.named_children() if isinstance(m, _ACTIVATIONS)]


def assignment_from_matches(
    gt_labels: Union[Tensor, Sequence[Tensor]],
    matched_boxes: Union[Tensor, Sequence[Tensor]],
    gt_instances: List[Instances],
    num_classes: int,
) -> Dict[str, Tensor]:
    """A dense detector's label assignment, from what its ``label_anchors`` returns.

    Args:
        gt_labels: per image (R,) or stacked (N, R): class of each anchor, ``num_classes`` for
            background, -1 for ignored anchors.
        matched_boxes: per image (R, 4) or stacked (N, R, 4): the GT box matched to each anchor
            (gathered from ``gt_boxes``, so equal to it bit for bit).
        gt_instances: the N images' GT instances.

    Returns:
        ``{"gt_labels": (N, R) long, "gt_index": (N, R) long}``; ``gt_index`` is the index in
        ``gt_instances[i]`` of the GT of a foreground anchor (the first of identical boxes), -1
        for background and ignored anchors. One comparison per image, no loop over GTs.
    """
    labels, boxes = (
        x if isinstance(x, Tensor) else torch.stack(list(x)) for x in (gt_labels, matched_boxes)
    )
    index = torch.full_like(labels, -1)
    for i, inst in enumerate(gt_instances):
        gt = inst.gt_boxes.tensor.to(boxes)
        fg = (labels[i] >= 0) & (labels[i] < num_classes)
        if not len(gt) or not bool(fg.any()):
            continue
        same = (boxes[i][fg][:, None, :] == gt[None]).all(dim=-1)  # (P, G)
        first = same.to(torch.uint8).argmax(dim=1)
        index[i, fg] = torch.where(same.any(dim=1), first, torch.full_like(first, -1))
    return {"gt_labels": labels, "gt_index": index}


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no conv layer to take a width from")
    return convs[-1].out_channels


@META_ARCH_REGISTRY.register()
class KDDenseDetector(KDMetaArchBase):
    """Distil a one-stage dense detector (``MODEL.KD.STUDENT_META_ARCHITECTURE``: "RetinaNet",
    "FCOS", or any :class:`DenseDetector` with ``head``, ``anchor_generator`` and
    ``forward_training``).

    Captured per step, for teacher and student: bottom-up stages, neck levels, head-tower
    features (``TOWER_PATHS``), head outputs (``PREDICTION_NAMES``) and anchors/points.
    """

    kind = "dense"

    @classmethod
    def describe(cls, model: nn.Module, input_format: str) -> ModelSpec:
        if not isinstance(model, DenseDetector):
            raise TypeError(
                f"KDDenseDetector needs one-stage DenseDetector models, got {type(model).__name__}"
                " (use KDGeneralizedRCNN for two-stage detectors)."
            )
        stages, levels = cls.backbone_shapes(model)
        towers = {
            name: _last_conv_channels(get_submodule(model, path))
            for name, path in TOWER_PATHS.items()
            if get_submodule(model, path) is not None
        }
        return ModelSpec(
            kind="dense",
            arch=type(model).__name__,
            num_classes=model.num_classes,
            backbone_shapes=stages,
            feature_shapes=levels,
            head_in_features=list(model.head_in_features),
            tower_channels=towers,
            num_anchors=model.anchor_generator.num_cell_anchors[0],
            input_format=input_format,
            arch_bases=tuple(c.__name__ for c in type(model).__mro__),
            stage_order=stage_order(model),
            box2box_transform=getattr(model, "box2box_transform", None),
        )

    @staticmethod
    def capture(
        model: DenseDetector, batched_inputs: List[dict], leaf_features: bool = False
    ) -> Tuple[DetectorOutputs, list]:
        """Run preprocessing, backbone and head of ``model``, recording the intermediates.

        Args:
            leaf_features: run the backbone without a graph and make its outputs leaf tensors
                that require grad, so that the head (and losses computed from it) can be
                differentiated with respect to the neck features alone.

        Returns:
            (captured tensors, the head's raw per-level predictions as ``model.head`` returned
            them, for ``model.forward_training``)
        """
        images = model.preprocess_image(batched_inputs)
        paths, blocks = {}, {}
        for name, path in TOWER_PATHS.items():
            tower = get_submodule(model, path)
            if tower is None:
                continue
            paths[name] = path
            blocks[name] = [f"_{name}.{i}" for i in range(len(_block_ends(tower)))]
            paths.update({b: f"{path}.{n}" for b, n in zip(blocks[name], _block_ends(tower))})
        if hasattr(model.backbone, "bottom_up"):
            paths["_bottom_up"] = "backbone.bottom_up"
        with ForwardRecorder(model, outputs=paths) as rec:
            with torch.no_grad() if leaf_features else contextlib.nullcontext():
                features = model.backbone(images.tensor)
            if leaf_features:
                features = {k: v.detach().requires_grad_() for k, v in features.items()}
            levels = [features[f] for f in model.head_in_features]
            predictions = model.head(levels)
        records = rec.records
        backbone = records.pop("_bottom_up", [features])[0]
        tower_blocks = {t: [records.pop(b) for b in names] for t, names in blocks.items()}
        out = DetectorOutputs(
            images=images,
            backbone=backbone,
            features=features,
            head_in_features=list(model.head_in_features),
            towers=records,
            tower_blocks=tower_blocks,
            predictions=dict(zip(PREDICTION_NAMES, predictions)),
            anchors=model.anchor_generator(levels),
            model=model,
            detection_loss_fn=_detection_loss_fn(model, images),
        )
        return out, predictions

    def student_step(
        self, batched_inputs, gt_instances
    ) -> Tuple[Dict[str, Tensor], DetectorOutputs]:
        model = self.student
        out, predictions = self.capture(model, batched_inputs)
        recording = (
            record_calls(model, "label_anchors")
            if hasattr(model, "label_anchors")
            else contextlib.nullcontext([])
        )
        with recording as assigned:
            losses = model.forward_training(
                out.images, out.level_features(), predictions, gt_instances
            )
        out.losses = dict(losses)
        if assigned:
            labels, boxes = assigned[0]
            out.assignment = assignment_from_matches(labels, boxes, gt_instances, model.num_classes)
        return losses, out

    def teacher_step(
        self,
        batched_inputs,
        student: DetectorOutputs,
        gt_instances: Optional[List[Instances]] = None,
        leaf_features: bool = False,
    ) -> DetectorOutputs:
        """The teacher's captured tensors (neck outputs as leaves with ``leaf_features``); with
        ``gt_instances``, also its detection losses, differentiable with respect to its neck
        features (leaf tensors); the other captured tensors are then detached."""
        with_losses = gt_instances is not None
        leaves = leaf_features or with_losses
        out, predictions = self.capture(self.teacher, batched_inputs, leaf_features=leaves)
        if with_losses:
            out.losses = self.teacher.forward_training(
                out.images, out.level_features(), predictions, gt_instances
            )
            _detach_captures(out)
        return out


@contextlib.contextmanager
def _state_kept(model: nn.Module):
    """Restore the detector's plain numeric attributes on exit: detectron2's dense detectors keep
    exponential moving averages (e.g. ``loss_normalizer``) as attributes updated by every loss
    computation."""
    saved = {k: v for k, v in vars(model).items() if isinstance(v, (int, float, Tensor))}
    try:
        yield
    finally:
        for key in [k for k, v in vars(model).items() if isinstance(v, (int, float, Tensor))]:
            if key not in saved:
                delattr(model, key)
        for key, value in saved.items():
            setattr(model, key, value)


def _detection_loss_fn(model: DenseDetector, images: ImageList) -> DetectionLossFn:
    """The dense detector's head and losses on ``images``, from given neck features; the
    detector's state (its loss normalizer's moving average) is left unchanged."""

    def detection_losses(features: Dict[str, Tensor], targets: List[Instances]):
        levels = [features[f] for f in model.head_in_features]
        with _state_kept(model):
            return model.forward_training(images, levels, model.head(levels), targets)

    return detection_losses


def _detach_captures(out: DetectorOutputs) -> None:
    """Detach the head's captured tensors (towers, blocks, predictions) in place."""
    out.towers = {k: [x.detach() for x in v] for k, v in out.towers.items()}
    out.tower_blocks = {
        k: [[x.detach() for x in level] for level in v] for k, v in out.tower_blocks.items()
    }
    out.predictions = {k: [x.detach() for x in v] for k, v in out.predictions.items()}
