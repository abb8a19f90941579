"""detectron2's FCOS, buildable from a yacs config (``MODEL.META_ARCHITECTURE: "FCOS"``).

detectron2 ships :class:`detectron2.modeling.meta_arch.fcos.FCOS` for LazyConfig only. The classes
here add ``from_config`` and nothing else: parameter names are identical, so a checkpoint trained
through yacs loads into detectron2's own FCOS built from ``configs/common/models/fcos.py``.
"""

from typing import List

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead as _D2FCOSHead

from ...config import add_fcos_config

__all__ = ["FCOS", "FCOSHead", "build_fcos_resnet_fpn_backbone", "shared_head_width"]


def shared_head_width(input_shape: List[ShapeSpec], head: str) -> int:
    """The one channel count of all levels a head shared across levels consumes."""
    channels = {s.channels for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"{head} head needs equal channels on all levels, got {channels}")
    return input_shape[0].channels


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet-FPN with P6/P7 computed from P5 (FCOS paper, Sec. 2.2), unlike RetinaNet's C5.

    Returns:
        FPN with outputs p3..p7 (strides 8..128), ``cfg.MODEL.FPN.OUT_CHANNELS`` channels each.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


class FCOSHead(_D2FCOSHead):
    """:class:`detectron2.modeling.meta_arch.fcos.FCOSHead` with a yacs ``from_config``."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        add_fcos_config(cfg)
        width = shared_head_width(input_shape, "FCOS")
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "conv_dims": [width] * cfg.MODEL.FCOS.NUM_CONVS,
            "norm": cfg.MODEL.FCOS.NORM,
            "prior_prob": cfg.MODEL.FCOS.PRIOR_PROB,
        }


@META_ARCH_REGISTRY.register()
class FCOS(_D2FCOS):
    """:class:`detectron2.modeling.meta_arch.fcos.FCOS` with a yacs ``from_config``.

    Config keys: ``MODEL.FCOS.*`` (see :func:`kd_det2.config.add_fcos_config`), plus the usual
    ``MODEL.BACKBONE``, ``MODEL.PIXEL_MEAN/STD`` and ``TEST.DETECTIONS_PER_IMAGE``.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
    ):
        """detectron2's FCOS losses, computed in float32: under autocast the head's outputs are
        half precision and detectron2's GIoU loss (fvcore) fails on mixed half/float boxes."""
        pred_logits, pred_anchor_deltas, pred_centerness = (
            [x.float() for x in preds]
            for preds in (pred_logits, pred_anchor_deltas, pred_centerness)
        )
        return super().losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
        )

    @classmethod
    def from_config(cls, cfg):
        add_fcos_config(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in cfg.MODEL.FCOS.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES has {missing}, which the backbone does not output "
                f"(it outputs {sorted(shapes)}). Use MODEL.BACKBONE.NAME "
                "'build_fcos_resnet_fpn_backbone' for p3..p7."
            )
        head = FCOSHead(cfg, [shapes[f] for f in cfg.MODEL.FCOS.IN_FEATURES])
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": cfg.MODEL.FCOS.IN_FEATURES,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "center_sampling_radius": cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA,
            "test_score_thresh": cfg.MODEL.FCOS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.FCOS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }
