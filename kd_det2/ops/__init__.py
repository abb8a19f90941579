"""Operators of the distillers: PGD's key predictive regions (PyTorch implementation, and Triton
kernels behind ``key_region_weights_triton``, imported on first use so that importing this
package does not import triton)."""

from .key_regions import (
    BACKEND_ENV,
    key_region_weights,
    pad_gt,
    points_inside_boxes,
    reference_key_region_weights,
    resolve_backend,
)

__all__ = [
    "BACKEND_ENV",
    "key_region_weights",
    "key_region_weights_triton",
    "pad_gt",
    "points_inside_boxes",
    "reference_key_region_weights",
    "resolve_backend",
]


def __getattr__(name):
    if name == "key_region_weights_triton":
        from .key_regions_triton import key_region_weights_triton

        return key_region_weights_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
