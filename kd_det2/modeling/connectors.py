"""Adapters that map student features to the teacher's width."""

from torch import nn

__all__ = ["build_adapter"]


def build_adapter(in_channels: int, out_channels: int, always: bool = False) -> nn.Module:
    """A 1x1 conv from ``in_channels`` to ``out_channels`` (identity when they are equal).

    Args:
        always: use a 1x1 conv even when the widths are equal.

    Returns:
        module mapping (N, in_channels, H, W) -> (N, out_channels, H, W).
    """
    if in_channels == out_channels and not always:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv
