"""Detectors detectron2 lacks (or lacks yacs support for), registered on import."""

from .fcos import FCOS, FCOSHead, build_fcos_resnet_fpn_backbone

__all__ = ["FCOS", "FCOSHead", "build_fcos_resnet_fpn_backbone"]
