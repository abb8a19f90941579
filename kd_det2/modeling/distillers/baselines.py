"""Baseline distillers: FitNet feature imitation and soft-label logit KD.

They prove the framework end to end and are the reference points the published methods are
compared with.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from ..connectors import build_adapter
from ..outputs import DetectorOutputs, ModelSpec
from .base import (
    KD_DISTILLER_REGISTRY,
    Distiller,
    cat_dense_levels,
    check_features,
    check_same_head_levels,
)

__all__ = ["FitNet", "LogitKD", "sigmoid_kd_loss", "softmax_kd_loss"]


def _check_same_shape(what: str, s: Tensor, t: Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ. Teacher and "
            "student must see the same padded input (same backbone size_divisibility) and use the "
            "same strides/anchors."
        )


@KD_DISTILLER_REGISTRY.register()
class FitNet(Distiller):
    """FitNet-style imitation of neck (FPN) features.

    ``loss_kd_fitnet = w * mean_l mean((adapter_l(S_l) - T_l)^2)``: the mean squared error over
    all elements of each level, averaged over the levels.
    """

    vanishing_terms = ("loss_kd_fitnet",)
    level_key = "MODEL.KD.FITNET.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        loss_weight: float = 1.0,
        always_adapt: bool = False,
    ):
        """
        Args:
            in_features: neck levels to imitate, e.g. ["p3", ..., "p7"].
            student_channels / teacher_channels: level -> channels.
            loss_weight: weight of ``loss_kd_fitnet``.
            always_adapt: use a 1x1 adapter even when the widths match.
        """
        super().__init__()
        self.in_features = list(in_features)
        self.loss_weight = loss_weight
        self.adapters = nn.ModuleDict(
            {
                f: build_adapter(student_channels[f], teacher_channels[f], always_adapt)
                for f in self.in_features
            }
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        feats = list(cfg.MODEL.KD.FITNET.IN_FEATURES) or list(student.head_in_features)
        check_features(feats, student, teacher, "MODEL.KD.FITNET.IN_FEATURES", "feature_shapes")
        return {
            "in_features": feats,
            "student_channels": {f: student.feature_shapes[f].channels for f in feats},
            "teacher_channels": {f: teacher.feature_shapes[f].channels for f in feats},
            "loss_weight": cfg.MODEL.KD.FITNET.LOSS_WEIGHT,
            "always_adapt": cfg.MODEL.KD.FITNET.ALWAYS_ADAPT,
        }

    def forward(self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances):
        losses = []
        for f in self.in_features:
            s = self.adapters[f](student.features[f])
            t = teacher.features[f]
            _check_same_shape(f"FitNet level {f}", s, t)
            losses.append(F.mse_loss(s.float(), t.float()))
        return {"loss_kd_fitnet": self.loss_weight * torch.stack(losses).mean()}


def sigmoid_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Binary (per-class sigmoid) KL divergence of softened teacher and student, times T^2.

    Args:
        student_logits, teacher_logits: (M, K) logits of M locations/anchors.

    Returns:
        scalar: ``T^2 * mean_m sum_k KL(Bern(sigma(t_mk / T)) || Bern(sigma(s_mk / T)))``.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    p = t.sigmoid()
    # KL = CE(p, sigma(s)) - H(p); both in the numerically stable with-logits form.
    kl = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    kl = kl - F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return kl.sum(dim=-1).mean() * temperature**2 if kl.numel() else kl.sum()


def softmax_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Softmax KL divergence of softened teacher and student (Hinton et al.), times T^2.

    Args:
        student_logits, teacher_logits: (M, K+1) logits of M RoIs.

    Returns:
        scalar: ``T^2 * mean_m KL(softmax(t_m / T) || softmax(s_m / T))``.
    """
    if student_logits.numel() == 0:
        return student_logits.sum()
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@KD_DISTILLER_REGISTRY.register()
class LogitKD(Distiller):
    """Soft-label KD of classification logits.

    Dense students: :func:`sigmoid_kd_loss` over every anchor of every level (detectron2's dense
    heads are sigmoid classifiers). Two-stage students: :func:`softmax_kd_loss` on the RoI head's
    (K+1)-way logits over the student's sampled proposals, the teacher's RoI head being run on
    the same boxes.
    """

    vanishing_terms = ("loss_kd_logit",)

    @configurable
    def __init__(self, *, num_classes: int, temperature: float = 2.0, loss_weight: float = 1.0):
        """
        Args:
            num_classes: K, to split dense (N, A*K, Hi, Wi) logits into anchors and classes.
            temperature: softening temperature T (losses are scaled by T^2).
            loss_weight: weight of ``loss_kd_logit``.
        """
        super().__init__()
        self.num_classes = num_classes
        self.temperature = temperature
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        if student.kind == "dense":
            check_same_head_levels("LogitKD", student, teacher)
        return {
            "num_classes": student.num_classes,
            "temperature": cfg.MODEL.KD.LOGIT.TEMPERATURE,
            "loss_weight": cfg.MODEL.KD.LOGIT.LOSS_WEIGHT,
        }

    def forward(self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances):
        if student.roi:
            s, t = student.roi["cls_logits"], teacher.roi["cls_logits"]
            _check_same_shape("LogitKD RoI logits", s, t)
            loss = softmax_kd_loss(s, t, self.temperature)
        else:
            s_levels = student.predictions["cls_logits"]
            t_levels = teacher.predictions["cls_logits"]
            for i, (s, t) in enumerate(zip(s_levels, t_levels)):
                _check_same_shape(f"LogitKD level {i} logits", s, t)
            s = cat_dense_levels(s_levels, self.num_classes).flatten(0, 1)
            t = cat_dense_levels(t_levels, self.num_classes).flatten(0, 1)
            loss = sigmoid_kd_loss(s, t, self.temperature)
        return {"loss_kd_logit": self.loss_weight * loss}
