"""Detectors detectron2 lacks (or lacks yacs support for), registered on import."""

from .atss import ATSSMatch, atss_match, pairwise_diou
from .fcos import FCOS, FCOSHead, build_fcos_resnet_fpn_backbone
from .gfl import GFL, GFLHead, build_gfl_anchor_generator
from .gfl_losses import DistributionBox2BoxTransform, distribution_focal_loss, quality_focal_loss

__all__ = [
    "ATSSMatch",
    "DistributionBox2BoxTransform",
    "FCOS",
    "FCOSHead",
    "GFL",
    "GFLHead",
    "atss_match",
    "build_fcos_resnet_fpn_backbone",
    "build_gfl_anchor_generator",
    "distribution_focal_loss",
    "pairwise_diou",
    "quality_focal_loss",
]
