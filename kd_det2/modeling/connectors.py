"""Adapters that map student features to the teacher's width."""

import torch
from detectron2.layers import get_norm
from torch import nn

__all__ = ["build_adapter"]


def build_adapter(
    in_channels: int,
    out_channels: int,
    always: bool = False,
    norm: str = "",
    identity_init: bool = False,
) -> nn.Module:
    """A 1x1 conv from ``in_channels`` to ``out_channels`` (identity when they are equal).

    Args:
        always: use a 1x1 conv even when the widths are equal.
        norm: a detectron2 norm name (e.g. "BN", see ``detectron2.layers.get_norm``) appended
            after the conv; "" for none. A norm implies the conv, whatever the widths.
        identity_init: when the widths are equal, start the conv as the identity (weight I,
            bias 0) instead of a random init, so that the conv passes features through unchanged
            until it is trained.

    Returns:
        module mapping (N, in_channels, H, W) -> (N, out_channels, H, W).
    """
    if in_channels == out_channels and not always and not norm:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    if identity_init and in_channels == out_channels:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(out_channels).view(out_channels, out_channels, 1, 1))
    else:
        nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    if not norm:
        return conv
    return nn.Sequential(conv, get_norm(norm, out_channels))
