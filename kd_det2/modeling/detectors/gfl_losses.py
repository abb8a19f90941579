"""Generalized Focal Loss v1 (Li et al., NeurIPS 2020): the box-edge distribution transform,
Quality Focal Loss and Distribution Focal Loss.

Notation: P locations, K classes, n = ``reg_max``; an edge distribution has n + 1 bins 0..n,
in units of the level's stride.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DistributionBox2BoxTransform", "distribution_focal_loss", "quality_focal_loss"]


class DistributionBox2BoxTransform:
    """Anchors <-> boxes for a GFL head: each of the distances from the anchor centre to the
    left, top, right and bottom box edges is the expected value of a discrete distribution over
    the bins 0..n, in units of the stride (the integral decoding of GFL).

    The stride of an anchor is its width divided by ``anchor_scale`` (GFL's anchors are squares
    of ``anchor_scale`` strides: octave base scale 8). Same interface as detectron2's
    ``Box2BoxTransform``, so detectron2's dense-detector decoding uses it unchanged.
    """

    def __init__(self, reg_max: int = 16, anchor_scale: float = 8.0):
        if reg_max < 1:
            raise ValueError(f"reg_max must be >= 1, got {reg_max}")
        self.reg_max = int(reg_max)
        self.anchor_scale = float(anchor_scale)

    def strides(self, anchors: Tensor) -> Tensor:
        """(R, 4) anchors -> (R, 1) strides."""
        return ((anchors[:, 2] - anchors[:, 0]) / self.anchor_scale)[:, None]

    def integral(self, logits: Tensor) -> Tensor:
        """(..., 4 * (n + 1)) logits -> (..., 4) expected distances, in bins."""
        shape = logits.shape[:-1]
        probs = F.softmax(logits.reshape(*shape, 4, self.reg_max + 1).float(), dim=-1)
        bins = torch.arange(self.reg_max + 1, device=logits.device, dtype=probs.dtype)
        return (probs * bins).sum(dim=-1)

    def apply_deltas(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Decode boxes.

        Args:
            deltas: (R, 4 * (n + 1)) edge-distribution logits.
            anchors: (R, 4) XYXY anchor boxes.

        Returns:
            (R, 4) XYXY boxes: centre -+ expected distance x stride.
        """
        distances = self.integral(deltas) * self.strides(anchors.float())
        centres = (anchors[:, :2] + anchors[:, 2:]).float() * 0.5
        return torch.cat([centres - distances[:, :2], centres + distances[:, 2:]], dim=1)

    def get_deltas(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Regression targets: (R, 4) anchors, (R, 4) GT boxes -> (R, 4) distances (l, t, r, b)
        from the anchor centre, in strides, clamped to [0, n - 0.1] (the last bin pair must
        straddle the target for DFL)."""
        centres = (anchors[:, :2] + anchors[:, 2:]) * 0.5
        distances = torch.cat([centres - boxes[:, :2], boxes[:, 2:] - centres], dim=1)
        return (distances / self.strides(anchors)).clamp(min=0, max=self.reg_max - 0.1)


def quality_focal_loss(logits: Tensor, labels: Tensor, quality: Tensor, beta: float = 2.0):
    """Quality Focal Loss, per location (summed over classes).

    QFL(sigma) = -|y - sigma|^beta * ((1 - y) log(1 - sigma) + y log(sigma)), where for the
    location's GT class y is the IoU quality target and 0 for every other class (and for
    background locations).

    Args:
        logits: (P, K) class logits.
        labels: (P,) class index in [0, K), or K (or any value outside) for background.
        quality: (P,) IoU targets in [0, 1] (read only where labels is a class).
        beta: focusing exponent.

    Returns:
        (P,) losses.
    """
    logits = logits.float()
    sigma = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    loss = loss * sigma.pow(beta)
    k = logits.shape[1]
    pos = torch.nonzero((labels >= 0) & (labels < k), as_tuple=True)[0]
    if pos.numel():
        cls = labels[pos]
        target = quality[pos].float()
        pos_logits = logits[pos, cls]
        pos_loss = F.binary_cross_entropy_with_logits(pos_logits, target, reduction="none")
        pos_loss = pos_loss * (target - sigma[pos, cls]).abs().pow(beta)
        loss = loss.index_put((pos, cls), pos_loss)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss, per edge.

    With y_l = floor(y) and y_r = y_l + 1:
    DFL = -((y_r - y) log S(y_l) + (y - y_l) log S(y_r)), S = softmax over the n + 1 bins.

    Args:
        logits: (E, n + 1) edge-distribution logits.
        target: (E,) distances in bins, in [0, n) (see ``get_deltas``).

    Returns:
        (E,) losses.
    """
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = target - left.float()
    logits = logits.float()
    return (
        F.cross_entropy(logits, left, reduction="none") * w_left
        + F.cross_entropy(logits, right, reduction="none") * w_right
    )
