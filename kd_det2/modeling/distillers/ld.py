"""LD: Localization Distillation for dense object detection (Zheng et al., CVPR 2022).

Logit mimicking applied to localization: the student's box-edge distributions (GFL's 4 x (n+1)
bins per location) imitate the teacher's, softened by a temperature, on the main region (the
student's ATSS positives) and on the valuable localization region (VLR: anchors whose DIoU with
a GT is just below that GT's ATSS threshold); plus classification KD on the main region.
Teacher and student must both have distribution heads (:class:`~kd_det2.modeling.detectors.GFL`)
with the same anchors and the same n.

Notation: N images, K classes, n = reg_max, R locations (one anchor each) over all levels, P
selected locations, G GTs of an image.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ...config.defaults import register_kd_config_hook
from ..detectors.atss import atss_match, pairwise_diou
from ..outputs import DetectorOutputs, ModelSpec
from .base import KD_DISTILLER_REGISTRY, Distiller, cat_dense_levels, check_same_head_levels

__all__ = ["LD", "add_ld_config", "kd_cls_loss", "ld_edge_loss", "vlr_weights"]

_NORMS = ("official", "per_positive_mean")


@register_kd_config_hook
def add_ld_config(cfg: CN) -> None:
    """Add ``MODEL.KD.LD`` (defaults: the official GFL ``LDHead`` settings)."""
    if "LD" in cfg.MODEL.KD:
        return
    _C = cfg.MODEL.KD.LD = CN()
    # Weight of "loss_kd_ld_main" (LD on the student's ATSS positives); 0 disables the term.
    _C.LOSS_WEIGHT_MAIN = 0.25
    # Weight of "loss_kd_ld_vlr" (LD on the valuable localization region); 0 disables it.
    _C.LOSS_WEIGHT_VLR = 0.25
    # Temperature tau of both LD terms (losses scaled by tau^2).
    _C.TEMPERATURE = 10.0
    # Weight of "loss_kd_ld_cls" (softmax KL of class logits on the positives); 0 disables it.
    _C.LOSS_WEIGHT_KD = 10.0
    # Temperature of the classification KD (losses scaled by T^2).
    _C.KD_TEMPERATURE = 2.0
    # VLR: anchors with VLR_LOW * gamma <= DIoU(anchor, GT) < gamma, gamma the GT's ATSS threshold.
    _C.VLR_LOW = 0.25
    # Remove the main-region positives from the VLR (the official GFL head keeps them).
    _C.VLR_EXCLUDE_POSITIVES = True
    # "official": main LD summed over positives / 4, VLR LD summed / 16, as the official code;
    # "per_positive_mean": both averaged over their locations and the 4 edges.
    _C.NORM = "official"


def ld_edge_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """LD of every edge: tau^2 * mean over the n + 1 bins of p_T (log p_T - log p_S), with
    p = softmax(logits / tau) per edge; the teacher is a detached target.

    Args:
        student, teacher: (P, 4 * (n + 1)) edge-distribution logits.

    Returns:
        (P, 4) losses, >= 0, zero where the two distributions are equal.
    """
    p, d = student.shape
    s = student.float().reshape(p * 4, d // 4) / temperature
    t = teacher.detach().float().reshape(p * 4, d // 4) / temperature
    kl = F.kl_div(
        F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="none"
    )
    return kl.mean(dim=1).view(p, 4) * temperature**2


def kd_cls_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Classification KD: T^2 * mean over the K classes of the KL from softmax(z_T / T) to
    softmax(z_S / T).

    Args:
        student, teacher: (P, K) class logits.

    Returns:
        (P,) losses.
    """
    s = F.log_softmax(student.float() / temperature, dim=1)
    t = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="none").mean(dim=1) * temperature**2


def vlr_weights(
    ious: Tensor, dious: Tensor, thresholds: Tensor, low: float = 0.25, exclude=None
) -> Tensor:
    """Valuable-localization-region weight of every anchor.

    An anchor is in the VLR of GT g when ``low * gamma_g <= DIoU(a, g) < gamma_g``; among the GTs
    it qualifies for, the one of largest IoU gives its weight, that IoU.

    Args:
        ious, dious: (R, G) IoU and DIoU of every anchor box with every GT.
        thresholds: (G,) ATSS thresholds gamma_g.
        exclude: optional (R,) bool, anchors removed from the VLR (the main positives).

    Returns:
        (R,) weights, 0 outside the VLR.
    """
    if ious.shape[1] == 0:
        return ious.new_zeros(ious.shape[0])
    inside = (dious >= low * thresholds[None]) & (dious < thresholds[None])
    weights = torch.where(inside, ious, torch.zeros_like(ious)).amax(dim=1)
    if exclude is not None:
        weights = weights.masked_fill(exclude, 0.0)
    return weights


@KD_DISTILLER_REGISTRY.register()
class LD(Distiller):
    """Localization distillation (main region + VLR) and main-region classification KD.

    Losses (each times its weight, omitted when its weight is 0):

    * ``loss_kd_ld_main`` = sum over the student's ATSS positives a and edges e of
      w_a * LD(a, e) / 4, with w_a = max_c sigmoid(z^S_a,c) (detached);
    * ``loss_kd_ld_vlr`` = sum over VLR anchors of v_a * LD(a, e) / 16, v_a their IoU;
    * ``loss_kd_ld_cls`` = per level, sum over its positives of the class KD / their number,
      summed over levels.

    Interpretations (see docs/LD.md): positives are excluded from the VLR by default (the
    official GFL head keeps them); the VLR weight is the IoU (as the code); "official"
    normalisation (sums over locations) by default. Optional feature imitation of the paper is
    not part of this distiller (combine with ``FitNet`` for it).
    """

    supported_kinds = ("dense",)
    supported_archs = ("GFL",)
    vanishing_terms = ("loss_kd_ld_main", "loss_kd_ld_vlr", "loss_kd_ld_cls")

    @configurable
    def __init__(
        self,
        *,
        atss_topk: int = 9,
        loss_weight_main: float = 0.25,
        loss_weight_vlr: float = 0.25,
        temperature: float = 10.0,
        loss_weight_kd: float = 10.0,
        kd_temperature: float = 2.0,
        vlr_low: float = 0.25,
        vlr_exclude_positives: bool = True,
        norm: str = "official",
    ):
        """
        Args:
            atss_topk: the student's ATSS candidates per level (its assigner's setting).
            Others: see ``MODEL.KD.LD`` in :func:`add_ld_config`.
        """
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"MODEL.KD.LD.NORM must be one of {_NORMS}, got {norm!r}")
        if temperature <= 0 or kd_temperature <= 0:
            raise ValueError("MODEL.KD.LD.TEMPERATURE and KD_TEMPERATURE must be > 0")
        self.atss_topk = int(atss_topk)
        self.weights = {"main": loss_weight_main, "vlr": loss_weight_vlr, "cls": loss_weight_kd}
        self.temperature = float(temperature)
        self.kd_temperature = float(kd_temperature)
        self.vlr_low = float(vlr_low)
        self.vlr_exclude_positives = bool(vlr_exclude_positives)
        self.norm = norm

    def extra_repr(self) -> str:
        w = self.weights
        return (
            f"main={w['main']}, vlr={w['vlr']}, kd={w['cls']}, tau={self.temperature}, "
            f"kd_tau={self.kd_temperature}, vlr_low={self.vlr_low}, "
            f"vlr_exclude_positives={self.vlr_exclude_positives}, norm={self.norm}, "
            f"atss_topk={self.atss_topk}"
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        reg_max = {}
        for role, spec in (("student", student), ("teacher", teacher)):
            reg_max[role] = getattr(spec.box2box_transform, "reg_max", None)
            if spec.kind != "dense" or reg_max[role] is None:
                raise ValueError(
                    f"MODEL.KD.DISTILLERS has LD, which needs box-edge distribution heads; the "
                    f"{role} ({spec.arch}) has none. Use GFL for both (META_ARCHITECTURE / "
                    "MODEL.KD.STUDENT_META_ARCHITECTURE 'GFL', and a GFL teacher config)."
                )
            if spec.num_anchors != 1:
                raise ValueError(f"LD needs one anchor per location; the {role} has more")
        if reg_max["student"] != reg_max["teacher"]:
            raise ValueError(
                f"LD needs the same MODEL.GFL.REG_MAX in teacher ({reg_max['teacher']}) and "
                f"student ({reg_max['student']}): set the student's to the teacher's."
            )
        if student.num_classes != teacher.num_classes:
            raise ValueError(
                f"LD: the teacher has {teacher.num_classes} classes, the student "
                f"{student.num_classes}: set MODEL.GFL.NUM_CLASSES to the teacher's."
            )
        check_same_head_levels("LD", student, teacher)
        p = cfg.MODEL.KD.LD
        return {
            "atss_topk": cfg.MODEL.GFL.ATSS_TOPK,
            "loss_weight_main": p.LOSS_WEIGHT_MAIN,
            "loss_weight_vlr": p.LOSS_WEIGHT_VLR,
            "temperature": p.TEMPERATURE,
            "loss_weight_kd": p.LOSS_WEIGHT_KD,
            "kd_temperature": p.KD_TEMPERATURE,
            "vlr_low": p.VLR_LOW,
            "vlr_exclude_positives": p.VLR_EXCLUDE_POSITIVES,
            "norm": p.NORM,
        }

    @torch.no_grad()
    def regions(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """Main region and VLR of every image.

        Args:
            anchors: the student's, per level Boxes (Hi*Wi, 4).

        Returns:
            positives (N, R) bool (the student's ATSS positives); vlr (N, R) float VLR weights.
        """
        per_level = [a.tensor for a in anchors]
        all_anchors = torch.cat(per_level)
        positives, vlr = [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor.to(all_anchors)
            match = atss_match(per_level, gt, self.atss_topk)
            pos = match.matched_idxs >= 0
            positives.append(pos)
            if self.weights["vlr"] and len(gt):
                dious = pairwise_diou(all_anchors, gt)
                exclude = pos if self.vlr_exclude_positives else None
                vlr.append(vlr_weights(match.ious, dious, match.thresholds, self.vlr_low, exclude))
            else:
                vlr.append(all_anchors.new_zeros(all_anchors.shape[0]))
        return torch.stack(positives), torch.stack(vlr)

    def forward(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        # one anchor per location: (N, R, K) logits and (N, R, 4(n+1)) distributions
        s_logits, s_dists, t_logits, t_dists = (
            cat_dense_levels(levels, levels[0].shape[1])
            for out in (student, teacher)
            for levels in (out.predictions["cls_logits"], out.predictions["box_deltas"])
        )
        if s_dists.shape != t_dists.shape or s_logits.shape != t_logits.shape:
            raise ValueError(
                f"LD: student predictions {tuple(s_logits.shape)}/{tuple(s_dists.shape)} and "
                f"teacher {tuple(t_logits.shape)}/{tuple(t_dists.shape)} differ; teacher and "
                "student need the same input padding (size_divisibility), levels and reg_max."
            )
        pos, vlr = self.regions(student.anchors, gt_instances)
        zero = s_dists.flatten()[:1].float().sum() * 0.0  # float: an fp16 sum can overflow
        losses = {}
        if self.weights["main"]:
            ld = ld_edge_loss(s_dists[pos], t_dists[pos], self.temperature)  # (P, 4)
            w = s_logits[pos].detach().float().sigmoid().amax(dim=1, keepdim=True)
            losses["loss_kd_ld_main"] = self._reduce(ld * w, 4.0, zero)
        if self.weights["vlr"]:
            region = vlr > 0
            ld = ld_edge_loss(s_dists[region], t_dists[region], self.temperature)
            losses["loss_kd_ld_vlr"] = self._reduce(ld * vlr[region][:, None], 16.0, zero)
        if self.weights["cls"]:
            total = zero
            sizes = [x.shape[-2] * x.shape[-1] for x in student.predictions["cls_logits"]]
            for s, t, p in zip(
                s_logits.split(sizes, 1), t_logits.split(sizes, 1), pos.split(sizes, 1)
            ):
                if p.any():
                    kd = kd_cls_loss(s[p], t[p], self.kd_temperature)
                    total = total + kd.sum() / p.sum()
            losses["loss_kd_ld_cls"] = total
        _put_stats(pos, vlr)
        return {k: v * self.weights[k.rsplit("_", 1)[1]] for k, v in losses.items()}

    def _reduce(self, loss: Tensor, official_factor: float, zero: Tensor) -> Tensor:
        """(P, 4) weighted losses -> scalar by ``self.norm``."""
        if loss.numel() == 0:
            return zero
        if self.norm == "official":
            return loss.sum() / official_factor
        return loss.mean()


def _put_stats(pos: Tensor, vlr: Tensor) -> None:
    """Per-image means of the numbers of main-region and VLR locations, when training."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage outside a trainer
        return
    counts = torch.stack([pos.sum(), (vlr > 0).sum()]).tolist()
    storage.put_scalar("ld/num_main", counts[0] / pos.shape[0])
    storage.put_scalar("ld/num_vlr", counts[1] / pos.shape[0])
