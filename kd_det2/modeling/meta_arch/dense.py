"""KD wrapper for one-stage dense detectors (detectron2 ``DenseDetector``: RetinaNet, FCOS, ...)."""

from typing import Dict, List, Tuple

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import Tensor, nn

from ..outputs import DetectorOutputs, ModelSpec
from ..recorders import ForwardRecorder, get_submodule
from .base import KDMetaArchBase

__all__ = ["KDDenseDetector", "PREDICTION_NAMES", "TOWER_PATHS"]

#: names of the lists a dense head returns, by position (FCOS adds centerness).
PREDICTION_NAMES = ("cls_logits", "box_deltas", "ctrness")
#: tower name -> submodule path whose per-level outputs are the head-tower features.
TOWER_PATHS = {"cls": "head.cls_subnet", "reg": "head.bbox_subnet"}


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU)


def _block_ends(tower: nn.Module) -> List[str]:
    """Names of the children of a tower that end its blocks (conv -> [norm] -> activation)."""
    return [n for n, m in tower.named_children() if isinstance(m, _ACTIVATIONS)]


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
            box2box_transform=getattr(model, "box2box_transform", None),
        )

    @staticmethod
    def capture(model: DenseDetector, batched_inputs: List[dict]) -> Tuple[DetectorOutputs, list]:
        """Run preprocessing, backbone and head of ``model``, recording the intermediates.

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
            features = model.backbone(images.tensor)
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
        )
        return out, predictions

    def student_step(
        self, batched_inputs, gt_instances
    ) -> Tuple[Dict[str, Tensor], DetectorOutputs]:
        out, predictions = self.capture(self.student, batched_inputs)
        losses = self.student.forward_training(
            out.images, out.level_features(), predictions, gt_instances
        )
        return losses, out

    def teacher_step(self, batched_inputs, student: DetectorOutputs) -> DetectorOutputs:
        return self.capture(self.teacher, batched_inputs)[0]
