"""Pretrained lightweight backbones (MobileNetV2, EfficientNet-Lite0/1/2), registered on import.

Each family has four builders in detectron2's BACKBONE_REGISTRY, named as detectron2's ResNet ones:
``build_<family>_backbone`` (stages only), ``build_<family>_fpn_backbone`` (P2-P6, Faster R-CNN),
``build_retinanet_<family>_fpn_backbone`` (P3-P7, P6/P7 from C5) and
``build_fcos_<family>_fpn_backbone`` (P3-P7, P6/P7 from P5: FCOS, GFL). See docs/BACKBONES.md.
"""

from .base import (
    BACKBONE_CONFIG_NODES,
    NORMS,
    STAGES,
    StagedBackbone,
    backbone_config_node,
    build_lightweight_fpn,
    convert_norm,
)
from .efficientnet_lite import (
    EfficientNetLiteBackbone,
    add_efficientnet_lite_config,
    build_efficientnet_lite_backbone,
    build_efficientnet_lite_fpn_backbone,
    build_fcos_efficientnet_lite_fpn_backbone,
    build_retinanet_efficientnet_lite_fpn_backbone,
)
from .mobilenet_v2 import (
    MobileNetV2Backbone,
    add_mobilenet_v2_config,
    build_fcos_mobilenet_v2_fpn_backbone,
    build_mobilenet_v2_backbone,
    build_mobilenet_v2_fpn_backbone,
    build_retinanet_mobilenet_v2_fpn_backbone,
)
from .weights import IMAGENET_WEIGHTS, WeightsPackage, imagenet_weights_file, load_pretrained

__all__ = [
    "BACKBONE_CONFIG_NODES",
    "EfficientNetLiteBackbone",
    "IMAGENET_WEIGHTS",
    "MobileNetV2Backbone",
    "NORMS",
    "STAGES",
    "StagedBackbone",
    "WeightsPackage",
    "add_efficientnet_lite_config",
    "add_mobilenet_v2_config",
    "backbone_config_node",
    "build_efficientnet_lite_backbone",
    "build_efficientnet_lite_fpn_backbone",
    "build_fcos_efficientnet_lite_fpn_backbone",
    "build_fcos_mobilenet_v2_fpn_backbone",
    "build_lightweight_fpn",
    "build_mobilenet_v2_backbone",
    "build_mobilenet_v2_fpn_backbone",
    "build_retinanet_efficientnet_lite_fpn_backbone",
    "build_retinanet_mobilenet_v2_fpn_backbone",
    "convert_norm",
    "imagenet_weights_file",
    "load_pretrained",
]
