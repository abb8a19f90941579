"""RM + PFI: Rank Mimicking and Prediction-guided Feature Imitation (Li et al., AAAI 2022).

Two distillers for one-stage dense detectors whose teacher and student share the head levels and
anchors (so that anchor r is the same box in both):

* :class:`RM` (rank mimicking): for every GT, the scores of its positive anchors (the student's
  own label assignment) at the GT's class become a distribution by a softmax, for teacher and
  student; the student minimises KL(teacher || student), averaged over the GTs with at least two
  positives. A second term does the same with the quality branch (FCOS centerness).
* :class:`PFI` (prediction-guided feature imitation): neck features imitate the teacher's with a
  per-location weight equal to the teacher-student prediction difference, so that imitation
  concentrates where the student's outputs are still wrong.

Notation: N images, K classes, A anchors per location, level l of size H x W, R anchors of all
levels in detectron2's order (level, y, x, anchor), P positive anchors of the batch, G groups
(one per GT with positives). Interpretations of the paper are config switches; see docs/RM_PFI.md.
"""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...config.defaults import register_kd_config_hook
from ..connectors import build_adapter
from ..outputs import DetectorOutputs, ModelSpec
from .base import KD_DISTILLER_REGISTRY, Distiller, check_features, check_same_head_levels

__all__ = [
    "PFI",
    "RM",
    "add_rm_pfi_config",
    "gather_dense",
    "pfi_level_loss",
    "pfi_weight",
    "rank_mimic_loss",
    "segment_log_softmax",
]

_SPACES = ("logit", "prob")
_RM_REDUCTIONS = ("gt", "anchor")
_PFI_NORMS = ("none", "level_mean")
_EPS = 1e-12
#: detector classes with a separate localisation-quality branch, and its prediction name
_QUALITY = {"FCOS": "ctrness"}


@register_kd_config_hook
def add_rm_pfi_config(cfg: CN) -> None:
    """Add ``MODEL.KD.RM`` and ``MODEL.KD.PFI`` (defaults: the spec's starting values)."""
    if "RM" not in cfg.MODEL.KD:
        _C = cfg.MODEL.KD.RM = CN()
        # lambda_RM: weight of "loss_kd_rm_cls" and "loss_kd_rm_quality".
        _C.LOSS_WEIGHT = 1.0
        # Weight of the quality-rank term relative to the class-rank term (FCOS centerness; the
        # term does not exist for RetinaNet and GFL); 0 disables it.
        _C.QUALITY_WEIGHT = 1.0
        # Temperature tau of both softmaxes over a GT's positive anchors.
        _C.TEMPERATURE = 1.0
        # Multiply the KL by tau^2 (the usual KD gradient-scale correction; no effect at tau 1).
        _C.SCALE_BY_T2 = True
        # Scores ranked: "logit" (pre-sigmoid) or "prob" (sigmoid, as the public mmrazor PR).
        _C.SCORE_SPACE = "logit"
        # "gt": sum of the KLs / number of GTs with >= 2 positives (the spec); "anchor": / their
        # number of positives.
        _C.REDUCTION = "gt"
    if "PFI" not in cfg.MODEL.KD:
        _C = cfg.MODEL.KD.PFI = CN()
        # lambda_PFI: weight of "loss_kd_pfi".
        _C.LOSS_WEIGHT = 1.0
        # Neck levels imitated, a subset of the heads' levels; [] = all the heads' levels.
        _C.IN_FEATURES = []
        # Normalisation of the weight map D: "level_mean" (D / its mean over the level and the
        # batch) or "none" (D as is, the literal formula).
        _C.NORMALIZE_WEIGHT = "level_mean"
        # Detach D (a guidance weight); False lets the loss reach the student's head through D.
        _C.DETACH_WEIGHT = True
        # D from the difference of "prob" (sigmoid scores, the spec) or "logit" (raw logits, as
        # the public mmrazor PR).
        _C.PRED_SPACE = "prob"
        # D = mean over anchors and classes of |difference| ** DIFF_POWER (2: squared, 1: absolute).
        _C.DIFF_POWER = 2.0
        # Add the quality branch's difference (FCOS centerness) to D.
        _C.QUALITY = False
        # Use a 1x1 adapter even when the student's and the teacher's widths are equal.
        _C.ALWAYS_ADAPT = False


def _check_choice(key: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")


def _check_pair(name: str, student: ModelSpec, teacher: ModelSpec, quality: bool) -> bool:
    """Build-time checks shared by RM and PFI; returns whether the quality branch is used."""
    check_same_head_levels(name, student, teacher)
    if student.num_classes != teacher.num_classes:
        raise ValueError(
            f"{name} compares class scores anchor by anchor: the teacher has "
            f"{teacher.num_classes} classes, the student {student.num_classes}. Give both the "
            "same NUM_CLASSES."
        )
    has = [spec.is_a(_QUALITY) for spec in (student, teacher)]
    if quality and has[0] != has[1]:
        raise ValueError(
            f"{name}: only one of student ({student.arch}) and teacher ({teacher.arch}) has a "
            f"quality branch ({list(_QUALITY)}); use the same detector family for both or turn "
            f"the quality term off (MODEL.KD.RM.QUALITY_WEIGHT 0 / MODEL.KD.PFI.QUALITY False)."
        )
    return quality and has[0]


def _quality_name(spec: ModelSpec) -> str:
    return next(v for k, v in _QUALITY.items() if spec.is_a([k]))


def _check_same(what: str, s: Tensor, t: Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ; teacher and "
            "student need the same input padding (size_divisibility), levels and anchors."
        )


def _storage():
    """The current event storage, or None outside a trainer."""
    try:
        return get_event_storage()
    except AssertionError:
        return None


# ---------------------------------------------------------------------------- rank mimicking
def segment_log_softmax(x: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Log-softmax of ``x`` within each group of entries.

    Args:
        x: (P,) float scores.
        group: (P,) long group id of each entry, in [0, num_groups).

    Returns:
        (P,) ``x_p - log sum_{q in group(p)} exp(x_q)``, computed with the group maximum
        subtracted (scatter amax, then index_add of the exponentials).
    """
    top = x.new_full((num_groups,), float("-inf"))
    top = top.scatter_reduce(0, group, x.detach(), reduce="amax", include_self=True)
    shifted = x - top[group]
    sums = x.new_zeros(num_groups).index_add(0, group, shifted.exp())
    return shifted - sums.log()[group]


def rank_mimic_loss(
    student: Tensor,
    teacher: Tensor,
    group: Tensor,
    temperature: float = 1.0,
    reduction: str = "gt",
    scale_by_t2: bool = True,
) -> Tuple[Tensor, int]:
    """Rank-mimicking KL over variable-size groups (a GT's positive anchors), vectorised.

    Args:
        student, teacher: (P,) scores of the positive anchors at their GT's class (the teacher's
            is a detached target).
        group: (P,) long id of the GT of each anchor (any values; only equality matters).
        reduction: "gt": sum of the per-group KLs / |G+|; "anchor": / the number of anchors of
            the groups in G+. G+ = groups with at least two entries (a one-entry group has a
            one-point distribution and contributes exactly 0).
        scale_by_t2: multiply by tau^2.

    Returns:
        (scalar loss in float32, |G+|). The loss is
        ``sum_{g in G+} sum_{a in g} P^T_a (log P^T_a - log P^S_a) / denominator`` with
        ``P = softmax over the group of score / tau``; 0 (in the student's graph) when G+ is empty.
    """
    _check_choice("reduction", reduction, _RM_REDUCTIONS)
    zero = student[:1].float().sum() * 0.0
    if student.numel() == 0:
        return zero, 0
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    num_groups = int((counts >= 2).sum())
    if num_groups == 0:
        return zero, 0
    _, inverse = torch.unique(inverse[keep], return_inverse=True)
    s = student[keep].float() / temperature
    t = teacher[keep].detach().float() / temperature
    log_s = segment_log_softmax(s, inverse, num_groups)
    log_t = segment_log_softmax(t, inverse, num_groups)
    kl = (log_t.exp() * (log_t - log_s)).sum()
    denominator = num_groups if reduction == "gt" else int(keep.sum())
    loss = kl / denominator
    return (loss * temperature**2 if scale_by_t2 else loss), num_groups


def positive_groups(assignment: Dict[str, Tensor], num_classes: int) -> Tuple[Tensor, ...]:
    """The positive anchors of a dense detector's label assignment, with their GT groups.

    Args:
        assignment: ``{"gt_labels": (N, R), "gt_index": (N, R)}`` (see
            :class:`~kd_det2.modeling.outputs.DetectorOutputs`).

    Returns:
        (image, anchor, class, group), each (P,) long: the image and anchor index of each
        positive, its GT's class, and ``image * G_max + gt_index`` (one id per (image, GT)).
    """
    labels, index = assignment["gt_labels"], assignment["gt_index"]
    positive = (labels >= 0) & (labels < num_classes) & (index >= 0)
    image, anchor = positive.nonzero(as_tuple=True)
    gt = index[image, anchor]
    g_max = max(int(index.max()) + 1, 1) if index.numel() else 1
    return image, anchor, labels[image, anchor], image * g_max + gt


def gather_dense(
    levels: List[Tensor], k: int, image: Tensor, anchor: Tensor, channel: Tensor
) -> Tensor:
    """Entries of per-level dense head outputs at given anchors, without concatenating them.

    Args:
        levels: per level (N, A*k, Hi, Wi).
        image, anchor, channel: (P,) long; ``anchor`` indexes the anchors of all levels in
            detectron2's order (level, y, x, anchor), that of ``base.cat_dense_levels``.

    Returns:
        (P,) ``cat_dense_levels(levels, k)[image, anchor, channel]``, differentiable.
    """
    out = levels[0].new_zeros(anchor.shape[0])
    start = 0
    for x in levels:
        a, w = x.shape[1] // k, x.shape[3]
        size = x.shape[2] * w * a
        inside = (anchor >= start) & (anchor < start + size)
        r = (anchor - start).clamp(0, size - 1)  # valid indices everywhere; masked below
        location, j = r // a, r % a
        values = x[image, j * k + channel, location // w, location % w]
        out = torch.where(inside, values, out)
        start += size
    return out


@KD_DISTILLER_REGISTRY.register()
class RM(Distiller):
    """Rank mimicking: per GT, KL(softmax of the teacher's scores || the student's) over the GT's
    positive anchors (the student's own assignment, recorded from its ``label_anchors``).

    Losses (times ``LOSS_WEIGHT``): ``loss_kd_rm_cls`` on the class logit of the GT's class
    (GFL: its joint class-IoU score); ``loss_kd_rm_quality`` (times ``QUALITY_WEIGHT`` as well)
    on the quality logit, for detectors with a quality branch (FCOS centerness).
    """

    supported_kinds = ("dense",)
    supported_archs = ("RetinaNet", "FCOS", "GFL")
    vanishing_terms = ("loss_kd_rm_cls", "loss_kd_rm_quality")

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        loss_weight: float = 1.0,
        quality: Optional[str] = None,
        quality_weight: float = 1.0,
        temperature: float = 1.0,
        scale_by_t2: bool = True,
        score_space: str = "logit",
        reduction: str = "gt",
    ):
        """
        Args:
            num_classes: K, to split dense (N, A*K, Hi, Wi) logits into anchors and classes.
            quality: name of the quality prediction (FCOS: "ctrness"), or None.
            Others: see ``MODEL.KD.RM`` in :func:`add_rm_pfi_config`.
        """
        super().__init__()
        _check_choice("MODEL.KD.RM.SCORE_SPACE", score_space, _SPACES)
        _check_choice("MODEL.KD.RM.REDUCTION", reduction, _RM_REDUCTIONS)
        if temperature <= 0:
            raise ValueError(f"MODEL.KD.RM.TEMPERATURE must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.quality = quality if quality_weight else None
        self.quality_weight = quality_weight
        self.temperature = float(temperature)
        self.scale_by_t2 = bool(scale_by_t2)
        self.score_space = score_space
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (
            f"weight={self.loss_weight}, quality={self.quality}, "
            f"quality_weight={self.quality_weight}, tau={self.temperature}, "
            f"scale_by_t2={self.scale_by_t2}, space={self.score_space}, "
            f"reduction={self.reduction}"
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        p = cfg.MODEL.KD.RM
        quality = _check_pair("RM", student, teacher, p.QUALITY_WEIGHT != 0)
        return {
            "num_classes": student.num_classes,
            "loss_weight": p.LOSS_WEIGHT,
            "quality": _quality_name(student) if quality else None,
            "quality_weight": p.QUALITY_WEIGHT,
            "temperature": p.TEMPERATURE,
            "scale_by_t2": p.SCALE_BY_T2,
            "score_space": p.SCORE_SPACE,
            "reduction": p.REDUCTION,
        }

    def forward(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        if student.assignment is None:
            raise ValueError(
                "RM needs the student's label assignment (DetectorOutputs.assignment), recorded "
                "from its label_anchors by KDDenseDetector; this student has none."
            )
        image, anchor, label, group = positive_groups(student.assignment, self.num_classes)
        terms = {"cls": ("cls_logits", self.num_classes, label)}
        if self.quality is not None:
            terms["quality"] = (self.quality, 1, torch.zeros_like(label))
        losses, ranked = {}, 0
        for term, (key, k, channel) in terms.items():
            s_levels, t_levels = student.predictions[key], teacher.predictions[key]
            for i, (x, y) in enumerate(zip(s_levels, t_levels)):
                _check_same(f"RM {key} level {i}", x, y)
            num_anchors = sum(x[0].numel() for x in s_levels) // k
            if num_anchors != student.assignment["gt_labels"].shape[1]:
                raise ValueError(
                    f"RM: {num_anchors} anchors in the predictions but "
                    f"{student.assignment['gt_labels'].shape[1]} in the assignment"
                )
            s = gather_dense(s_levels, k, image, anchor, channel)
            t = gather_dense(t_levels, k, image, anchor, channel).detach()
            if self.score_space == "prob":
                s, t = s.float().sigmoid(), t.float().sigmoid()
            loss, ranked = rank_mimic_loss(
                s, t, group, self.temperature, self.reduction, self.scale_by_t2
            )
            weight = self.loss_weight * (self.quality_weight if term == "quality" else 1.0)
            losses[f"loss_kd_rm_{term}"] = weight * loss
        storage, n = _storage(), max(len(gt_instances), 1)
        if storage is not None:
            storage.put_scalar("rm/ranked_gts", ranked / n)  # GTs with >= 2 positives, per image
            storage.put_scalar("rm/positives", image.numel() / n)
        return losses


# --------------------------------------------------------------- prediction-guided imitation
def pfi_weight(
    student_logits: Tensor,
    teacher_logits: Tensor,
    space: str = "prob",
    power: float = 2.0,
    student_quality: Optional[Tensor] = None,
    teacher_quality: Optional[Tensor] = None,
) -> Tensor:
    """PFI's prediction difference D at one level.

    Args:
        student_logits, teacher_logits: (N, A*K, H, W) class logits.
        space: "prob" compares sigmoid scores, "logit" raw logits.
        power: D averages |difference| ** power (2: squared).
        student_quality, teacher_quality: optional (N, A, H, W) quality logits (FCOS
            centerness), whose mean over anchors of |difference| ** power is added.

    Returns:
        (N, H, W) float32 ``D = mean_{a,c} |s(z^T_{a,c}) - s(z^S_{a,c})| ** power [+ quality]``,
        s the sigmoid or the identity; differentiable with respect to the student's logits.
    """

    def diff(s: Tensor, t: Tensor) -> Tensor:
        s, t = s.float(), t.detach().float()
        if space == "prob":
            s, t = s.sigmoid(), t.sigmoid()
        return (t - s).abs().pow(power).mean(dim=1)

    d = diff(student_logits, teacher_logits)
    if student_quality is not None:
        d = d + diff(student_quality, teacher_quality)
    return d


def pfi_level_loss(student: Tensor, teacher: Tensor, weight: Tensor) -> Tensor:
    """Weighted feature imitation at one level.

    Args:
        student: (N, C, H, W) adapted student features; teacher: (N, C, H, W) (a detached target).
        weight: (N, H, W) per-location weight.

    Returns:
        scalar float32 ``1/(N H W) sum_{n,i,j} weight * mean_c (teacher - student)^2``.
    """
    err = (teacher.detach().float() - student.float()).pow(2).mean(dim=1)  # (N, H, W)
    return (weight * err).mean()


@KD_DISTILLER_REGISTRY.register()
class PFI(Distiller):
    """Prediction-guided feature imitation of neck (FPN) levels.

    ``loss_kd_pfi = w * sum_l pfi_level_loss(adapter_l(F^S_l), F^T_l, D~_l)``, D~_l the
    prediction difference :func:`pfi_weight` of the heads at level l, detached and divided by its
    mean over the level and the batch (by default). An identical teacher gives exactly 0 (the
    adapter is an identity when the widths are equal, unless ``ALWAYS_ADAPT``).
    """

    supported_kinds = ("dense",)
    supported_archs = ("RetinaNet", "FCOS", "GFL")
    vanishing_terms = ("loss_kd_pfi",)
    level_key = "MODEL.KD.PFI.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        head_in_features: List[str],
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        in_features: Optional[List[str]] = None,
        teacher_head_in_features: Optional[List[str]] = None,
        loss_weight: float = 1.0,
        normalize_weight: str = "level_mean",
        detach_weight: bool = True,
        pred_space: str = "prob",
        diff_power: float = 2.0,
        quality: Optional[str] = None,
        always_adapt: bool = False,
    ):
        """
        Args:
            head_in_features: the levels the student's head reads, in its order (that of the
                heads' per-level predictions), e.g. ["p3", ..., "p7"].
            student_channels: student level -> channels; teacher_channels: teacher level ->
                channels.
            in_features: the student levels imitated, among ``head_in_features`` (None: all).
            teacher_head_in_features: the levels the teacher's head reads, level i imitating the
                student's level i (None: the student's names).
            quality: name of the quality prediction added to D (FCOS: "ctrness"), or None.
            Others: see ``MODEL.KD.PFI`` in :func:`add_rm_pfi_config`.
        """
        super().__init__()
        _check_choice("MODEL.KD.PFI.NORMALIZE_WEIGHT", normalize_weight, _PFI_NORMS)
        _check_choice("MODEL.KD.PFI.PRED_SPACE", pred_space, _SPACES)
        if diff_power <= 0:
            raise ValueError(f"MODEL.KD.PFI.DIFF_POWER must be > 0, got {diff_power}")
        head = list(head_in_features)
        teacher_head = list(teacher_head_in_features or head)
        feats = list(in_features or head)
        not_head = [f for f in feats if f not in head]
        if not_head or len(teacher_head) != len(head):
            raise ValueError(
                f"{self.level_key} has {not_head}, which the student's head does not read (it "
                f"reads {head}; the teacher's head {teacher_head}): PFI weights a level by the "
                "heads' predictions at that level. Choose among the heads' levels."
            )
        #: student level -> (teacher level, index in the heads' per-level predictions)
        self.levels = {f: (teacher_head[head.index(f)], head.index(f)) for f in feats}
        self.loss_weight = loss_weight
        self.normalize_weight = normalize_weight
        self.detach_weight = bool(detach_weight)
        self.pred_space = pred_space
        self.diff_power = float(diff_power)
        self.quality = quality
        self.adapters = nn.ModuleDict(
            {
                f: build_adapter(student_channels[f], teacher_channels[t], always_adapt)
                for f, (t, _) in self.levels.items()
            }
        )

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, weight={self.loss_weight}, "
            f"normalize={self.normalize_weight}, detach={self.detach_weight}, "
            f"space={self.pred_space}, power={self.diff_power}, quality={self.quality}"
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        p = cfg.MODEL.KD.PFI
        feats = list(p.IN_FEATURES) or list(student.head_in_features)
        check_features(feats, student, teacher, cls.level_key, "feature_shapes")
        quality = _check_pair("PFI", student, teacher, p.QUALITY)
        return {
            "head_in_features": list(student.head_in_features),
            "teacher_head_in_features": list(teacher.head_in_features),
            "in_features": feats,
            "student_channels": {f: s.channels for f, s in student.feature_shapes.items()},
            "teacher_channels": {f: s.channels for f, s in teacher.feature_shapes.items()},
            "loss_weight": p.LOSS_WEIGHT,
            "normalize_weight": p.NORMALIZE_WEIGHT,
            "detach_weight": p.DETACH_WEIGHT,
            "pred_space": p.PRED_SPACE,
            "diff_power": p.DIFF_POWER,
            "quality": _quality_name(student) if quality else None,
            "always_adapt": p.ALWAYS_ADAPT,
        }

    def level_weight(
        self, teacher: DetectorOutputs, student: DetectorOutputs, i: int
    ) -> Tuple[Tensor, Tensor]:
        """D~ of head level ``i``, (N, H, W), normalised and detached as configured, and the mean
        of D before normalisation (a detached scalar, for the event storage)."""
        s, t = student.predictions["cls_logits"][i], teacher.predictions["cls_logits"][i]
        _check_same(f"PFI level {i} logits", s, t)
        sq = tq = None
        if self.quality is not None:
            sq, tq = student.predictions[self.quality][i], teacher.predictions[self.quality][i]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_weight):
            d = pfi_weight(s, t, self.pred_space, self.diff_power, sq, tq)
            mean = d.mean()
            if self.normalize_weight == "level_mean":
                d = d / (mean + _EPS)
        return (d.detach() if self.detach_weight else d), mean.detach()

    def forward(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        total, means = 0.0, []
        for f, (tf, i) in self.levels.items():
            s = self.adapters[f](student.features[f])
            t = teacher.features[tf]
            _check_same(f"PFI level {f}", s, t)
            d, mean = self.level_weight(teacher, student, i)
            if d.shape != (s.shape[0],) + s.shape[2:]:
                raise ValueError(
                    f"PFI level {f}: the predictions' maps {tuple(d.shape)} do not match the "
                    f"features {tuple(s.shape)}"
                )
            total = total + pfi_level_loss(s, t, d)
            means.append(mean)
        storage = _storage()
        if storage is not None:  # the mean prediction difference D of each level
            for f, value in zip(self.levels, torch.stack(means).tolist()):
                storage.put_scalar(f"pfi/mean_diff_{f}", value)
        return {"loss_kd_pfi": self.loss_weight * total}
