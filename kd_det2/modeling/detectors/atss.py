"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020), and the box overlaps it uses.

Notation: R anchors over all levels (level-major, detectron2's anchor order), G GT boxes of one
image, L levels, k candidates per level and GT. Boxes are XYXY in input-image pixels.

Used by the GFL detector (its assigner) and by LD (its valuable localization region, which needs
the per-GT ATSS thresholds).
"""

from dataclasses import dataclass
from typing import List

import torch
from detectron2.structures import pairwise_iou
from detectron2.structures.boxes import Boxes
from torch import Tensor

__all__ = ["ATSSMatch", "atss_match", "pairwise_diou"]

#: an anchor centre must be this far (pixels) inside a GT to be a positive of that GT.
_INSIDE_EPS = 0.01


def _centres(boxes: Tensor) -> Tensor:
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


def pairwise_diou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Distance-IoU of every pair: IoU - d^2 / c^2, with d the distance between the two centres
    and c the diagonal of the smallest box enclosing both (Zheng et al., AAAI 2020).

    Args:
        boxes1: (R, 4); boxes2: (G, 4), XYXY.

    Returns:
        (R, G) in [-1, 1].
    """
    iou = pairwise_iou(Boxes(boxes1), Boxes(boxes2))
    d2 = (_centres(boxes1)[:, None, :] - _centres(boxes2)[None, :, :]).pow(2).sum(dim=-1)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    c2 = (rb - lt).pow(2).sum(dim=-1)
    return iou - d2 / c2.clamp(min=eps)


@dataclass
class ATSSMatch:
    """ATSS result for one image.

    Attributes:
        ious: (R, G) IoU of every anchor box with every GT.
        thresholds: (G,) gamma_g = mean + std (unbiased) of the IoUs of the GT's candidates.
        candidates: (L*k, G) anchor indices of the candidates: per level, the k anchors whose
            centres are closest to the GT's centre.
        matched_idxs: (R,) index of the matched GT, -1 for negatives.
    """

    ious: Tensor
    thresholds: Tensor
    candidates: Tensor
    matched_idxs: Tensor


def atss_match(anchors: List[Tensor], gt_boxes: Tensor, topk: int = 9) -> ATSSMatch:
    """Assign anchors to GTs by ATSS.

    Per GT: the candidates are the ``topk`` anchors per level whose centres are closest (L2) to
    the GT centre; its threshold is mean + std of their IoUs; a candidate is a positive when its
    IoU >= threshold and its centre lies inside the GT (by more than 0.01 px). An anchor positive
    for several GTs goes to the one of highest IoU (the first on ties).

    Args:
        anchors: per level (Ri, 4) anchor boxes; R = sum Ri.
        gt_boxes: (G, 4).
        topk: k, candidates per level (fewer on a level with fewer anchors).

    Returns:
        :class:`ATSSMatch`.
    """
    all_anchors = torch.cat(anchors, dim=0)
    r, g = all_anchors.shape[0], gt_boxes.shape[0]
    device = all_anchors.device
    if g == 0:
        empty = all_anchors.new_zeros((r, 0))
        return ATSSMatch(
            empty,
            all_anchors.new_zeros((0,)),
            torch.zeros((0, 0), dtype=torch.long, device=device),
            torch.full((r,), -1, dtype=torch.long, device=device),
        )
    ious = pairwise_iou(Boxes(all_anchors), Boxes(gt_boxes))  # (R, G)
    centres = _centres(all_anchors)
    # exact distances (cdist's default matrix-product formula is off by ~0.3 px at COCO scale,
    # enough to change a candidate set)
    distances = (centres[:, None, :] - _centres(gt_boxes)[None]).pow(2).sum(dim=-1)  # (R, G)
    candidates, start = [], 0
    for level in anchors:
        n = level.shape[0]
        k = min(topk, n)
        idx = distances[start : start + n].topk(k, dim=0, largest=False).indices  # (k, G)
        candidates.append(idx + start)
        start += n
    candidates = torch.cat(candidates, dim=0)  # (L*k, G)
    cand_ious = ious.gather(0, candidates)
    std = cand_ious.std(dim=0) if candidates.shape[0] > 1 else torch.zeros_like(cand_ious[0])
    thresholds = cand_ious.mean(dim=0) + std
    is_pos = cand_ious >= thresholds[None]

    cand_centres = centres[candidates]  # (L*k, G, 2)
    lt = cand_centres - gt_boxes[None, :, :2]
    rb = gt_boxes[None, :, 2:] - cand_centres
    inside = torch.cat([lt, rb], dim=-1).amin(dim=-1) > _INSIDE_EPS
    is_pos &= inside

    gt_idx = torch.arange(g, device=device).expand_as(candidates)
    masked = torch.full_like(ious, -float("inf"))
    masked[candidates[is_pos], gt_idx[is_pos]] = ious[candidates[is_pos], gt_idx[is_pos]]
    best, matched = masked.max(dim=1)
    matched[best == -float("inf")] = -1
    return ATSSMatch(ious, thresholds, candidates, matched)
