"""Operators of the distillers: PGD's key predictive regions (PyTorch implementation)."""

from .key_regions import (
    key_region_weights,
    pad_gt,
    points_inside_boxes,
    reference_key_region_weights,
)

__all__ = [
    "key_region_weights",
    "pad_gt",
    "points_inside_boxes",
    "reference_key_region_weights",
]
