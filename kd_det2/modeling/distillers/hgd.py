"""HGD: hands-on guidance for distilling object detectors (Qin et al., ICME 2021), INTERPRETED.

No code and no full text of the paper are public. This distiller implements our reading of the
abstract's four mechanisms (docs/HGD.md), every part behind a switch of ``MODEL.KD.HGD``:

1. stage correspondence: every student tap (bottom-up stage, neck level) is paired with the
   teacher tap of the same output stride, with an adapter per pair;
2. hands-on imitation: d_s = mean_c (N(F^T_s) - N(phi_s(F^S_s)))^2 per location, N a per-image,
   per-channel standardisation over space; optionally the cross-forward reading, where the
   adapted student stage goes through the frozen teacher's next stage;
3. micro re-weighting: an instance-balanced foreground mask, a background mask and a
   discrepancy focus, per location;
4. macro re-weighting: per-stage weights from a running average of each stage's loss.

Notation: N images, C channels, a tap of stride r and size H x W, G GT boxes of an image, S
imitation terms (pairs, plus cross-forward terms).
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...config.defaults import register_kd_config_hook
from ..connectors import build_adapter
from ..outputs import DetectorOutputs, ModelSpec
from ..stages import bottom_up, named_stages
from .base import KD_DISTILLER_REGISTRY, Distiller

__all__ = [
    "HGD",
    "CrossTerm",
    "StagePair",
    "add_hgd_config",
    "cross_forward_terms",
    "discrepancy",
    "instance_mask",
    "micro_weights",
    "model_taps",
    "stage_correspondence",
    "spatial_moments",
    "standardize",
]

logger = logging.getLogger(__name__)

_EPS = 1e-5  # of N(F) = (F - mu) / (sigma + eps)
_TINY = 1e-12
_MAP_SHARE = 0.01  # a channel's reference spread is at least this share of the map's
GROUPS = ("backbone", "neck")
MACRO_MODES = ("adaptive", "fixed")
#: a tap's shape: a ShapeSpec, or (channels, stride)
ShapeLike = Union[ShapeSpec, Sequence[int]]


@register_kd_config_hook
def add_hgd_config(cfg: CN) -> None:
    """Add ``MODEL.KD.HGD`` (defaults: the full method as docs/HGD.md interprets it)."""
    if "HGD" in cfg.MODEL.KD:
        return
    _C = cfg.MODEL.KD.HGD = CN()
    # lambda: weight of "loss_kd_hgd" = lambda * sum_s beta_s L_s.
    _C.LOSS_WEIGHT = 1.0
    # Student taps (bottom-up stages and/or neck levels) to imitate; empty = every tap with a
    # teacher tap of the same stride. The stages are those the backbone outputs: add "res2" to
    # MODEL.RESNETS.OUT_FEATURES (and to the teacher's) to imitate it.
    _C.STAGES = []
    # Pair bottom-up stages (res2-res5 or the equivalent outputs of other backbones).
    _C.BACKBONE = True
    # Pair neck (FPN) levels.
    _C.NECK = True
    # The direct imitation terms d(N(T_s), N(phi_s(S_s))) of every pair.
    _C.DIRECT = True
    # Add cross-forward terms: phi_s(S_s), given the teacher's per-channel statistics, goes
    # through the frozen teacher's next bottom-up stage and imitates that stage's own output.
    _C.CROSS_FORWARD = False
    # Norm after the 1x1 conv of the bottom-up stage adapters ("BN", or "" for none). Neck
    # adapters are a 1x1 conv without norm. Equal widths: the conv starts as the identity.
    _C.ADAPTER_NORM = "BN"
    # Standardise both maps per image and channel over space before comparing them (N(.)).
    _C.NORMALIZE = True
    # N's std is at least STD_FLOOR x the channel's RMS std over the batch (itself at least 1% of
    # the map's): bounds the gradient of spatially flat channels; 0: the plain sigma + 1e-5.
    _C.STD_FLOOR = 0.1
    # Micro re-weighting; False: every location of an image has the same weight (a plain mean).
    _C.MICRO = True
    # Foreground mask G: each GT box spreads a total mass of 1 over its cells (1 / area per
    # cell); False: a binary mask of the box cells.
    _C.INSTANCE_BALANCED = True
    # a: weight of the normalised foreground mask G / sum(G).
    _C.FG_WEIGHT = 1.0
    # b: weight of the normalised background mask B / sum(B), B = 1[G = 0] inside the image.
    _C.BG_WEIGHT = 0.5
    # kappa: discrepancy focus rho = (d / mean d)^kappa (detached); 0 turns the focus off.
    _C.FOCUS_EXPONENT = 1.0
    # G is clipped at 1 / MIN_AREA (area in cells of the tap): bounds overlapping small boxes.
    _C.MIN_AREA = 1.0
    # Macro (per-term) weights: "adaptive", beta = S * softmax(log(EMA of L_s) / tau); "fixed",
    # beta = 1.
    _C.MACRO = "adaptive"
    # tau of the adaptive macro weights.
    _C.MACRO_TEMPERATURE = 1.0
    # Momentum of the running average of each term's loss (adaptive macro weights).
    _C.MACRO_MOMENTUM = 0.9


# ------------------------------------------------------------------------------ correspondence
@dataclass(frozen=True)
class StagePair:
    """Student tap ``student`` imitates teacher tap ``teacher`` (same ``group``, same stride)."""

    group: str  # "backbone" (bottom-up stage) or "neck" (neck level)
    student: str
    teacher: str
    stride: int
    student_channels: int
    teacher_channels: int


@dataclass(frozen=True)
class CrossTerm:
    """The adapted student map of pair (``student``, ``teacher``) goes through the teacher's
    stage ``next_stage`` (of stride ``stride``), whose own output is the target."""

    student: str
    teacher: str
    next_stage: str
    stride: int

    @property
    def name(self) -> str:
        return f"{self.student}>{self.next_stage}"


def _shape(x: ShapeLike) -> ShapeSpec:
    if isinstance(x, ShapeSpec):
        return x
    channels, stride = x
    return ShapeSpec(channels=int(channels), stride=int(stride))


def model_taps(spec: ModelSpec) -> Dict[str, Dict[str, ShapeSpec]]:
    """A model's taps by group: ``{"backbone": bottom-up stages, "neck": neck levels that are
    not bottom-up stages}``, each name -> ShapeSpec (channels, stride), in the model's order."""
    backbone = dict(spec.backbone_shapes)
    neck = {k: v for k, v in spec.feature_shapes.items() if k not in backbone}
    return {"backbone": backbone, "neck": neck}


def _listing(taps: Mapping[str, Mapping[str, ShapeSpec]]) -> str:
    parts = []
    for group in GROUPS:
        names = ", ".join(f"{n} (stride {s.stride})" for n, s in taps.get(group, {}).items())
        parts.append(f"{group}: {names or 'none'}")
    return "; ".join(parts)


def stage_correspondence(
    student: Mapping[str, Mapping[str, ShapeLike]],
    teacher: Mapping[str, Mapping[str, ShapeLike]],
    stages: Sequence[str] = (),
    groups: Sequence[str] = GROUPS,
) -> List[StagePair]:
    """Pair student and teacher taps by output stride, within each group.

    Where one model has several taps of a stride in a group, the last one (in the model's
    order, the deepest) is used. Student taps without a teacher tap of their stride are skipped,
    unless named in ``stages``.

    Args:
        student, teacher: group ("backbone", "neck") -> tap name -> ShapeSpec or (channels,
            stride), e.g. from :func:`model_taps`.
        stages: student tap names to pair; empty: all that correspond.
        groups: the groups to pair.

    Returns:
        the pairs, ordered by group then stride.

    Raises:
        ValueError: a name of ``stages`` that is not a student tap of ``groups`` or has no
            teacher tap of its stride; no pair at all. The message lists both models' taps.
    """
    s_taps = {g: {n: _shape(v) for n, v in student.get(g, {}).items()} for g in groups}
    t_taps = {g: {n: _shape(v) for n, v in teacher.get(g, {}).items()} for g in groups}
    listing = f"student {_listing(s_taps)}. Teacher {_listing(t_taps)}"
    known = {n for g in groups for n in s_taps[g]}
    unknown = [n for n in stages if n not in known]
    if unknown:
        raise ValueError(
            f"MODEL.KD.HGD.STAGES names {unknown}, which are not student taps of the groups "
            f"{list(groups)} (MODEL.KD.HGD.BACKBONE / NECK). Taps: {listing}."
        )
    pairs = []
    for group in groups:
        last = {}  # stride -> the last teacher tap of that stride
        for name, shape in t_taps[group].items():
            last[shape.stride] = name
        if stages:
            chosen = [n for n in stages if n in s_taps[group]]
        else:
            by_stride = {}
            for name, shape in s_taps[group].items():
                by_stride[shape.stride] = name
            chosen = list(by_stride.values())
        for name in chosen:
            shape = s_taps[group][name]
            match = last.get(shape.stride)
            if match is None:
                if stages:
                    raise ValueError(
                        f"MODEL.KD.HGD.STAGES names the student {group} tap '{name}' (stride "
                        f"{shape.stride}), but the teacher has no {group} tap of that stride. "
                        f"Taps: {listing}."
                    )
                continue
            t_shape = t_taps[group][match]
            pairs.append(
                StagePair(group, name, match, shape.stride, shape.channels, t_shape.channels)
            )
    if not pairs:
        raise ValueError(
            f"HGD found no student tap with a teacher tap of the same stride in the groups "
            f"{list(groups)}: {listing}. Give the backbones outputs of common strides "
            "(e.g. MODEL.RESNETS.OUT_FEATURES), or enable MODEL.KD.HGD.BACKBONE / NECK."
        )
    return sorted(pairs, key=lambda p: (GROUPS.index(p.group), p.stride))


def cross_forward_terms(
    pairs: Sequence[StagePair],
    teacher_backbone: Mapping[str, ShapeLike],
    teacher_stage_order: Sequence[str],
) -> List[CrossTerm]:
    """The cross-forward terms of the bottom-up pairs whose teacher stage has a next stage that
    is one of the teacher's outputs (so that its own output is captured as the target).

    Raises:
        ValueError: the teacher's backbone does not expose its stages, or no pair qualifies.
    """
    order = list(teacher_stage_order)
    if not order:
        raise ValueError(
            "MODEL.KD.HGD.CROSS_FORWARD runs the teacher's bottom-up stages one at a time, but "
            "the teacher's backbone does not expose them: it needs a `named_stages()` method or "
            "detectron2 ResNet's `stage_names` and `stages` (see kd_det2.modeling.stages). Set "
            "MODEL.KD.HGD.CROSS_FORWARD False for this teacher."
        )
    terms = []
    for p in pairs:
        if p.group != "backbone" or p.teacher not in order:
            continue
        i = order.index(p.teacher)
        if i + 1 < len(order) and order[i + 1] in teacher_backbone:
            nxt = order[i + 1]
            terms.append(CrossTerm(p.student, p.teacher, nxt, _shape(teacher_backbone[nxt]).stride))
    if not terms:
        raise ValueError(
            "MODEL.KD.HGD.CROSS_FORWARD needs a bottom-up pair whose teacher stage is followed by "
            f"a stage the teacher outputs; pairs {[(p.student, p.teacher) for p in pairs]}, the "
            f"teacher's stages {order}, its outputs {list(teacher_backbone)}. Add stages to the "
            "teacher's OUT_FEATURES (MODEL.KD.TEACHER.OPTS) and MODEL.KD.HGD.STAGES."
        )
    return terms


# --------------------------------------------------------------------------------- imitation
def spatial_moments(x: Tensor, std_floor: float = 0.1) -> Tuple[Tensor, Tensor]:
    """Per image and channel: the spatial mean mu and the scale sigma_hat + 1e-5 of N(.).

    sigma_hat = max(sigma, floor): sigma the (population) std over space, and floor =
    ``std_floor`` * max(sigma_bar_c, 0.01 * sigma_bar), sigma_bar_c the channel's RMS of sigma
    over the batch and sigma_bar the map's RMS of sigma_bar_c over channels (both detached). The
    floor bounds the gradient (otherwise about 1 / (sigma + 1e-5)) of channels that are flat in an
    image (a dead channel, a 1x1 map): their normalised values shrink instead of being blown up
    to unit variance. N stays invariant to a positive scale per channel (up to the 1% share of
    the map). ``std_floor`` 0: the plain (F - mu) / (sigma + 1e-5).

    Args:
        x: (N, C, H, W).

    Returns:
        (mu, sigma_hat + 1e-5), each (N, C, 1, 1).
    """
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    std = var.clamp(min=_TINY).sqrt()  # the clamp keeps the gradient of a flat map finite
    if std_floor > 0:
        with torch.no_grad():
            channel = var.mean(dim=0, keepdim=True).sqrt()  # (1, C, 1, 1)
            reference = torch.maximum(channel, _MAP_SHARE * channel.pow(2).mean().sqrt())
        std = torch.maximum(std, std_floor * reference)
    return mean, std + _EPS


def standardize(x: Tensor, std_floor: float = 0.1) -> Tensor:
    """N(F) = (F - mu) / (sigma_hat + 1e-5) per image and channel over space
    (:func:`spatial_moments`). (N, C, H, W) -> (N, C, H, W)."""
    mean, scale = spatial_moments(x, std_floor)
    return (x - mean) / scale


def discrepancy(
    student: Tensor, teacher: Tensor, normalize: bool = True, std_floor: float = 0.1
) -> Tensor:
    """The per-location imitation discrepancy, in float32.

    Args:
        student: (N, C, H, W) adapted student map (gradient flows through).
        teacher: (N, C, H, W) teacher map (a detached target).
        normalize: compare N(teacher) and N(student) (:func:`standardize`); else the raw maps.
        std_floor: see :func:`spatial_moments`.

    Returns:
        (N, H, W): d = (1 / C) sum_c (N(T) - N(S))^2.
    """
    s, t = student.float(), teacher.detach().float()
    if normalize:
        t = standardize(t, std_floor)
        s = standardize(s, std_floor)
    return (t - s).pow(2).mean(dim=1)


# ------------------------------------------------------------------------------------- micro
def _cell_centres(n: int, stride: int, device) -> Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * stride


def instance_mask(
    boxes: Tensor,
    stride: int,
    height: int,
    width: int,
    instance_balanced: bool = True,
    min_area: float = 1.0,
) -> Tensor:
    """The foreground mask G of one image at one tap, vectorised over the boxes.

    A box's cells are those whose centre ((j + 0.5) r, (i + 0.5) r) lies in [x0, x1) x [y0, y1);
    a box that contains no cell centre gets the cell of its own centre. Instance-balanced: every
    box adds 1 / (its number of cells) on each of its cells, so that each box has a total mass
    of 1 whatever its size, and G is clipped at 1 / ``min_area`` (this only changes cells where
    overlapping boxes add up, or all box cells when ``min_area`` > 1). Otherwise G is the 0/1
    union of the box cells.

    Args:
        boxes: (G, 4) XYXY in input-image pixels.
        stride: r, the tap's stride in pixels.

    Returns:
        (H, W) float32 mask.
    """
    device = boxes.device
    if boxes.shape[0] == 0:
        return torch.zeros(height, width, device=device)
    b = boxes.float()
    xs, ys = _cell_centres(width, stride, device), _cell_centres(height, stride, device)
    in_x = ((xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])).float()  # (G, W)
    in_y = ((ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])).float()  # (G, H)
    area = in_x.sum(dim=1) * in_y.sum(dim=1)  # (G,) cells of each box
    empty = area == 0
    if instance_balanced:
        mass = torch.where(empty, torch.zeros_like(area), 1.0 / area.clamp(min=1.0))
    else:
        mass = (~empty).float()
    mask = in_y.t() @ (mass[:, None] * in_x)  # (H, W): sum over boxes of mass on their cells
    cx = ((b[:, 0] + b[:, 2]) * 0.5 / stride).floor().long().clamp(0, width - 1)
    cy = ((b[:, 1] + b[:, 3]) * 0.5 / stride).floor().long().clamp(0, height - 1)
    mask.index_put_((cy[empty], cx[empty]), torch.ones_like(area[empty]), accumulate=True)
    if instance_balanced:
        return mask.clamp(max=1.0 / min_area)
    return (mask > 0).float()


def _valid_mask(image_size: Tuple[int, int], stride: int, height: int, width: int, device):
    """(H, W) bool: cells that overlap the image (i r < h and j r < w), i.e. not entirely in the
    batch padding."""
    ys = torch.arange(height, device=device) * stride < image_size[0]
    xs = torch.arange(width, device=device) * stride < image_size[1]
    return ys[:, None] & xs[None, :]


@torch.no_grad()
def micro_weights(
    d: Tensor,
    boxes: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    stride: int,
    *,
    enabled: bool = True,
    instance_balanced: bool = True,
    fg_weight: float = 1.0,
    bg_weight: float = 0.5,
    focus_exponent: float = 1.0,
    min_area: float = 1.0,
) -> Tensor:
    """Micro weights m of one term, per image: ``[a G / sum G + b B / sum B] * rho``.

    G: :func:`instance_mask`; B = 1[G = 0] on the cells that overlap the image (cells entirely in
    the batch padding are neither); rho = (d / mean d)^kappa, the mean over the image's cells
    (kappa = 0: rho = 1). An image without GT boxes has only the background term. ``enabled``
    False: m is uniform over the image's cells (sum 1).

    Args:
        d: (N, H, W) discrepancy of the term.
        boxes: per image, (G_i, 4) XYXY GT boxes in input pixels.
        image_sizes: per image, (h, w) before padding.
        stride: the tap's stride.

    Returns:
        (N, H, W) float32 weights, detached.
    """
    n, h, w = d.shape
    out = []
    for i in range(n):
        valid = _valid_mask(image_sizes[i], stride, h, w, d.device).float()
        if not enabled:
            out.append(valid / valid.sum().clamp(min=1.0))
            continue
        g = instance_mask(boxes[i], stride, h, w, instance_balanced, min_area) * valid
        bg = (g == 0).float() * valid
        m = fg_weight * g / g.sum().clamp(min=_TINY) + bg_weight * bg / bg.sum().clamp(min=_TINY)
        if focus_exponent != 0:
            di = d[i].detach().float()
            mean = (di * valid).sum() / valid.sum().clamp(min=1.0)
            m = m * (di / mean.clamp(min=_TINY)).pow(focus_exponent)
        out.append(m)
    return torch.stack(out)


# ----------------------------------------------------------------------------------- distiller
@KD_DISTILLER_REGISTRY.register()
class HGD(Distiller):
    """All-stage imitation with stage correspondence, micro and macro re-weighting (our
    interpretation of HGD; see the module docstring and docs/HGD.md).

    Returns ``loss_kd_hgd = lambda * sum_s beta_s L_s`` with, for each term s (a direct pair, or
    a cross-forward term), ``L_s = 1/N sum_n sum_ij m_s(n, i, j) d_s(n, i, j)``
    (:func:`discrepancy`, :func:`micro_weights`) and beta the macro weights
    (:meth:`macro_weights`). Per-term losses and weights go to the event storage
    (``hgd/<term>``, ``hgd/beta/<term>``).

    State: one adapter per pair (bottom-up: 1x1 conv + ``adapter_norm``; neck: 1x1 conv; the
    conv starts as the identity when the widths are equal) and the buffers ``loss_ema`` (S,)
    (running average of each term's loss, identical on every process: the losses are averaged
    over processes before the update) and ``ema_updates``.
    """

    vanishing_terms = ("loss_kd_hgd",)
    level_key = "MODEL.KD.HGD.STAGES"

    @configurable
    def __init__(
        self,
        *,
        student_taps: Mapping[str, Mapping[str, ShapeLike]],
        teacher_taps: Mapping[str, Mapping[str, ShapeLike]],
        teacher_stage_order: Sequence[str] = (),
        stages: Sequence[str] = (),
        groups: Sequence[str] = GROUPS,
        loss_weight: float = 1.0,
        direct: bool = True,
        cross_forward: bool = False,
        adapter_norm: str = "BN",
        normalize: bool = True,
        std_floor: float = 0.1,
        micro: bool = True,
        instance_balanced: bool = True,
        fg_weight: float = 1.0,
        bg_weight: float = 0.5,
        focus_exponent: float = 1.0,
        min_area: float = 1.0,
        macro: str = "adaptive",
        macro_temperature: float = 1.0,
        macro_momentum: float = 0.9,
    ):
        """
        Args:
            student_taps, teacher_taps: group ("backbone", "neck") -> tap name -> ShapeSpec or
                (channels, stride) (:func:`model_taps`).
            teacher_stage_order: the teacher's bottom-up stages in order (``ModelSpec.
                stage_order``), for ``cross_forward``.
            stages, groups: see :func:`stage_correspondence`.
            Others: see ``MODEL.KD.HGD`` in :func:`add_hgd_config`.
        """
        super().__init__()
        _check_args(
            groups,
            direct,
            cross_forward,
            micro,
            fg_weight,
            bg_weight,
            focus_exponent,
            min_area,
            std_floor,
        )
        _check_macro(macro, macro_temperature, macro_momentum)
        pairs = stage_correspondence(student_taps, teacher_taps, stages, groups)
        self.cross_terms: List[CrossTerm] = []
        if cross_forward:
            t_backbone = teacher_taps.get("backbone", {})
            self.cross_terms = cross_forward_terms(pairs, t_backbone, teacher_stage_order)
        if not direct:  # keep the pairs the cross-forward terms read: no unused adapter
            pairs = [p for p in pairs if any(c.student == p.student for c in self.cross_terms)]
        self.pairs: List[StagePair] = pairs
        self.direct = bool(direct)
        self.term_names = [p.student for p in pairs] if direct else []
        self.term_names += [c.name for c in self.cross_terms]
        self.adapters = nn.ModuleDict(
            {
                p.student: build_adapter(
                    p.student_channels,
                    p.teacher_channels,
                    always=True,
                    norm=adapter_norm if p.group == "backbone" else "",
                    identity_init=True,
                )
                for p in pairs
            }
        )
        self.loss_weight = float(loss_weight)
        self.normalize = bool(normalize)
        self.std_floor = float(std_floor)
        self._micro = dict(
            enabled=bool(micro),
            instance_balanced=bool(instance_balanced),
            fg_weight=float(fg_weight),
            bg_weight=float(bg_weight),
            focus_exponent=float(focus_exponent),
            min_area=float(min_area),
        )
        self.macro = macro
        self.macro_temperature = float(macro_temperature)
        self.macro_momentum = float(macro_momentum)
        self.register_buffer("loss_ema", torch.ones(len(self.term_names)))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._warned = set()

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        h = cfg.MODEL.KD.HGD
        return {
            "student_taps": model_taps(student),
            "teacher_taps": model_taps(teacher),
            "teacher_stage_order": tuple(teacher.stage_order),
            "stages": list(h.STAGES),
            "groups": [g for g, on in (("backbone", h.BACKBONE), ("neck", h.NECK)) if on],
            "loss_weight": h.LOSS_WEIGHT,
            "direct": h.DIRECT,
            "cross_forward": h.CROSS_FORWARD,
            "adapter_norm": h.ADAPTER_NORM,
            "normalize": h.NORMALIZE,
            "std_floor": h.STD_FLOOR,
            "micro": h.MICRO,
            "instance_balanced": h.INSTANCE_BALANCED,
            "fg_weight": h.FG_WEIGHT,
            "bg_weight": h.BG_WEIGHT,
            "focus_exponent": h.FOCUS_EXPONENT,
            "min_area": h.MIN_AREA,
            "macro": h.MACRO,
            "macro_temperature": h.MACRO_TEMPERATURE,
            "macro_momentum": h.MACRO_MOMENTUM,
        }

    def extra_repr(self) -> str:
        pairs = ", ".join(f"{p.student}->{p.teacher} (stride {p.stride})" for p in self.pairs)
        return f"pairs=[{pairs}], terms={self.term_names}, macro={self.macro}"

    # ------------------------------------------------------------------------------ forward
    def forward(self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances):
        boxes = [x.gt_boxes.tensor for x in gt_instances]
        sizes = list(teacher.images.image_sizes)
        adapted: Dict[str, Tuple[Tensor, Tensor]] = {}
        terms = []
        for p in self.pairs:
            s = _tap(student, p.group, p.student, "student")
            t = _tap(teacher, p.group, p.teacher, "teacher").detach()
            self._warn_if_frozen(p.student, s)
            a = self.adapters[p.student](s)
            if a.shape[1] != t.shape[1]:
                raise ValueError(
                    f"HGD pair {p.student}->{p.teacher}: the adapter gives {a.shape[1]} channels, "
                    f"the teacher's map has {t.shape[1]}: fix teacher_taps / the teacher config."
                )
            if a.shape[-2:] != t.shape[-2:]:
                a = F.interpolate(
                    a.float(), size=t.shape[-2:], mode="bilinear", align_corners=False
                )
            adapted[p.student] = (a, t)
            if self.direct:
                terms.append(self._term(a, t, p.stride, boxes, sizes))
        if self.cross_terms:
            stages = self._teacher_stages(teacher)
            for c in self.cross_terms:
                a, t = adapted[c.student]
                target = _tap(teacher, "backbone", c.next_stage, "teacher").detach()
                out = stages[c.next_stage](self._to_teacher_scale(a, t))
                terms.append(self._term(out, target, c.stride, boxes, sizes))
        losses = torch.stack(terms)
        beta = self.macro_weights(losses.detach())
        _put_stats(self.term_names, losses.detach(), beta)
        return {"loss_kd_hgd": self.loss_weight * (beta * losses).sum()}

    def _term(self, s: Tensor, t: Tensor, stride: int, boxes, sizes) -> Tensor:
        """L = 1/N sum m * d of one term, in float32."""
        if s.shape != t.shape:
            raise ValueError(
                f"HGD: a student map {tuple(s.shape)} and its teacher map {tuple(t.shape)} differ"
            )
        with torch.autocast(s.device.type, enabled=False):
            d = discrepancy(s, t, self.normalize, self.std_floor)
            m = micro_weights(d, boxes, sizes, stride, **self._micro)
            return (m * d).sum() / d.shape[0]

    def _to_teacher_scale(self, a: Tensor, t: Tensor) -> Tensor:
        """The adapted student map with the teacher map's per-image, per-channel mean and scale
        (a detached target): N(a) scale_T + mu_T, equal to t when N(a) = N(t). Without
        ``normalize``, ``a`` itself."""
        if not self.normalize:
            return a
        with torch.autocast(a.device.type, enabled=False):
            mean, scale = spatial_moments(t.float(), self.std_floor)
            return standardize(a.float(), self.std_floor) * scale + mean

    @staticmethod
    def _teacher_stages(teacher: DetectorOutputs) -> Dict[str, nn.Module]:
        stages = named_stages(bottom_up(teacher.model)) if teacher.model is not None else None
        if stages is None:
            raise ValueError(
                "HGD cross-forward: the teacher's backbone does not expose its stages "
                "(kd_det2.modeling.stages); set MODEL.KD.HGD.CROSS_FORWARD False."
            )
        return dict(stages)

    def _warn_if_frozen(self, name: str, s: Tensor) -> None:
        if self.training and torch.is_grad_enabled() and not s.requires_grad:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    f"HGD: the student's '{name}' gets no gradient (a frozen stage, see "
                    "MODEL.BACKBONE.FREEZE_AT): only its adapter learns from this pair. Lower "
                    "FREEZE_AT or leave it out of MODEL.KD.HGD.STAGES."
                )

    # -------------------------------------------------------------------------------- macro
    def macro_weights(self, losses: Tensor) -> Tensor:
        """beta (S,), detached: ``S * softmax(log(EMA) / tau)`` ("adaptive"; the running
        average is updated with ``losses`` first, in training mode only) or ones ("fixed").
        sum(beta) = S; a term with a larger running loss gets a larger weight."""
        if self.macro == "fixed":
            return torch.ones_like(losses, dtype=torch.float32)
        if self.training:
            self._update_ema(losses)
        logits = self.loss_ema.clamp(min=_TINY).log() / self.macro_temperature
        return len(self.loss_ema) * torch.softmax(logits, dim=0)

    @torch.no_grad()
    def _update_ema(self, losses: Tensor) -> None:
        """Running average of the per-term losses, averaged over processes first so that every
        process keeps the same weights (and optimises the same objective). Non-finite losses
        leave their entry unchanged."""
        x = losses.detach().float().clone()
        world = comm.get_world_size()
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(x)
            x /= world
        ema = self.loss_ema
        x = torch.where(torch.isfinite(x), x, ema)
        m = self.macro_momentum
        ema.copy_(torch.where(self.ema_updates > 0, m * ema + (1 - m) * x, x))
        self.ema_updates += 1


def _check_args(
    groups, direct, cross_forward, micro, fg_weight, bg_weight, focus_exponent, min_area, std_floor
) -> None:
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise ValueError(
            f"HGD groups {list(groups)}: choose among {list(GROUPS)}; at least one of "
            "MODEL.KD.HGD.BACKBONE and MODEL.KD.HGD.NECK must be True."
        )
    if not direct and not cross_forward:
        raise ValueError("MODEL.KD.HGD.DIRECT and CROSS_FORWARD are both False: nothing to do.")
    if fg_weight < 0 or bg_weight < 0 or (micro and fg_weight + bg_weight == 0):
        raise ValueError(
            f"MODEL.KD.HGD.FG_WEIGHT ({fg_weight}) and BG_WEIGHT ({bg_weight}) must be >= 0, "
            "and not both 0."
        )
    if focus_exponent < 0:
        raise ValueError(f"MODEL.KD.HGD.FOCUS_EXPONENT must be >= 0, got {focus_exponent}")
    if std_floor < 0:
        raise ValueError(f"MODEL.KD.HGD.STD_FLOOR must be >= 0, got {std_floor}")
    if min_area <= 0:
        raise ValueError(f"MODEL.KD.HGD.MIN_AREA must be > 0 (cells), got {min_area}")


def _check_macro(macro, macro_temperature, macro_momentum) -> None:
    if macro not in MACRO_MODES:
        raise ValueError(f"MODEL.KD.HGD.MACRO must be one of {list(MACRO_MODES)}, got '{macro}'")
    if macro_temperature <= 0:
        raise ValueError(f"MODEL.KD.HGD.MACRO_TEMPERATURE must be > 0, got {macro_temperature}")
    if not 0 <= macro_momentum < 1:
        raise ValueError(f"MODEL.KD.HGD.MACRO_MOMENTUM must be in [0, 1), got {macro_momentum}")


def _tap(outputs: DetectorOutputs, group: str, name: str, role: str) -> Tensor:
    maps = outputs.backbone if group == "backbone" else outputs.features
    if name not in maps:
        raise KeyError(
            f"HGD: the {role} has no {group} output '{name}' (it has {sorted(maps)}); add it to "
            f"the {role}'s OUT_FEATURES (the teacher's through MODEL.KD.TEACHER.OPTS)."
        )
    return maps[name]


def _put_stats(names: List[str], losses: Tensor, beta: Tensor) -> None:
    """Per-term losses (``hgd/<term>``) and macro weights (``hgd/beta/<term>``)."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage outside a trainer
        return
    values = torch.stack([losses.float(), beta.float()]).tolist()  # one device-to-host copy
    for name, loss, weight in zip(names, *values):
        storage.put_scalar(f"hgd/{name}", loss)
        storage.put_scalar(f"hgd/beta/{name}", weight)
