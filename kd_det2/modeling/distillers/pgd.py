"""PGD: Prediction-Guided Distillation for dense object detectors (Yang et al., ECCV 2022).

Head-tower features of a one-stage student imitate the teacher's inside "key predictive regions":
per GT, the top-K locations where the teacher's own predictions are best, weighted by a Gaussian
fitted to them (:func:`kd_det2.ops.key_region_weights`). The classification tower gets an
FGD-style loss (foreground, background and attention terms), the regression tower a
foreground-only, channel-attention-weighted MSE. Notation: N images, C channels, level l of size
H x W, A anchors per location, K classes, R locations x anchors over all levels.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_first_n
from torch import Tensor, nn

from ...config.defaults import register_kd_config_hook
from ...ops import key_region_weights, pad_gt
from ..connectors import build_adapter
from ..outputs import DetectorOutputs, ModelSpec
from .base import KD_DISTILLER_REGISTRY, Distiller, cat_dense_levels, check_same_head_levels

__all__ = [
    "PGD",
    "add_pgd_config",
    "pgd_cls_terms",
    "pgd_cls_loss",
    "pgd_reg_loss",
    "pgd_reg_terms",
]

_EPS = 1e-10
#: MODEL.KD.PGD keys passed to ``PGD.__init__`` as the lower-case keyword of the same name.
_SCALAR_KEYS = (
    "XI_CLS XI_REG TOPK TEMPERATURE ALPHA BETA GAMMA DELTA TOWER_BLOCK MASK_BEFORE_TOPK "
    "OFFICIAL_BATCH_MASK_MIXING OFFICIAL_XY_SWAP ADAPT BACKEND TOPK_OVER EXCLUDE_PADDING"
).split()


@register_kd_config_hook
def add_pgd_config(cfg: CN) -> None:
    """Add ``MODEL.KD.PGD`` (defaults: the official FCOS R101 -> R50 config)."""
    if "PGD" in cfg.MODEL.KD:
        return
    _C = cfg.MODEL.KD.PGD = CN()
    # xi of the quality p^(1 - xi) * IoU^xi that ranks the key regions of the cls-tower loss.
    _C.XI_CLS = 0.8
    # xi of the key regions of the reg-tower loss.
    _C.XI_REG = 0.6
    # K: candidate locations per GT (top-K quality over all levels); 9 for ATSS, 30 otherwise.
    _C.TOPK = 30
    # Temperature T of the spatial and channel attentions (0.4 in the AutoAssign config).
    _C.TEMPERATURE = 0.8
    # alpha: weight of the cls-tower foreground term (0.08 for ATSS/DDOD/AutoAssign).
    _C.ALPHA = 0.04
    # beta: weight of the cls-tower background term (alpha / 2 in every official config).
    _C.BETA = 0.02
    # gamma: weight of the reg-tower feature term (1.6 * alpha in every official config).
    _C.GAMMA = 0.064
    # delta: weight of the attention terms of both towers (not multiplied by LEVEL_WEIGHTS).
    _C.DELTA = 8e-4
    # Per-level weights w_l of the cls foreground/background terms, one per head level (P3..P7).
    _C.LEVEL_WEIGHTS = [1.0, 1.25, 1.5, 1.75, 2.0]
    # Which tower block is distilled: 0 = output of the first conv -> norm -> ReLU (the paper).
    _C.TOWER_BLOCK = 0
    # True: candidates only among in-box locations (paper's Eq. 1); False: official code order.
    _C.MASK_BEFORE_TOPK = False
    # True reproduces the official cross-image mask broadcasting bug (each image weighted by the
    # sum of the batch's masks); for parity experiments only.
    _C.OFFICIAL_BATCH_MASK_MIXING = False
    # True reproduces the official (y, x) reading of point coordinates in the in-box and
    # background tests of anchor-free heads (FCOS); for parity experiments only.
    _C.OFFICIAL_XY_SWAP = False
    # 1x1 adapters from the student's to the teacher's tower width when they differ.
    _C.ADAPT = True
    # Key-region implementation: "auto" (the Triton kernels on CUDA, PyTorch otherwise; the
    # kernels' first call on a GPU is checked against PyTorch and dropped, with a warning, if it
    # fails or differs beyond key_regions.AUTO_ATOL on any rank; KD_DET2_KEY_REGIONS_BACKEND
    # overrides "auto"), "torch" or "triton" (forced, unchecked).
    _C.BACKEND = "auto"
    # Heads with several anchors per location (RetinaNet: 9): "locations" ranks locations by the
    # best quality of their anchors and takes the top-K locations (K distinct places, as with
    # the one-anchor heads of the paper); "anchors" takes the top-K anchors and the max weight
    # over a location's anchors (the spec's reading; K anchors often share 1-3 locations).
    # Always the PyTorch implementation for "locations" with A > 1.
    _C.TOPK_OVER = "locations"
    # Leave the batch padding out: locations whose centre lies outside their image get quality
    # 0 (no score, no box), and 0 in W and B, hence out of the masks' normalisers, as the
    # official anchor-based heads (ATSS, GFL) do. False counts padding as background, as the
    # official anchor-free heads (FCOS) do.
    _C.EXCLUDE_PADDING = True


def _attention(feat: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Spatial and per-location channel attention of FGD/PGD.

    Args:
        feat: (N, C, H, W) float32.

    Returns:
        spatial (N, 1, H, W) = H*W * softmax_hw(mean_c |F| / T);
        channel (N, C, H, W) = C * softmax_c(|F| / T) at every location.
    """
    n, c, h, w = feat.shape
    value = feat.abs()
    spatial = F.softmax(value.mean(dim=1).view(n, -1) / temperature, dim=1).view(n, 1, h, w)
    channel = F.softmax(value / temperature, dim=1)
    return spatial * (h * w), channel * c


def _normalise(mask: Tensor) -> Tensor:
    """(N, 1, H, W) mask divided per image by its count of non-zero entries (not its sum)."""
    count = (mask != 0).sum(dim=(2, 3), keepdim=True).to(mask.dtype)
    return mask / count.clamp(min=_EPS)


def pgd_cls_terms(
    student: Tensor,
    teacher: Tensor,
    fg: Tensor,
    bg: Tensor,
    temperature: float,
    batch_mask_mixing: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The three terms of PGD's classification-feature loss at one level.

    Args:
        student: (N, C, H, W) adapted student features (gradient flows through).
        teacher: (N, C, H, W) teacher features (a detached target).
        fg: (N, 1, H, W) key-region weights W^cls; bg: (N, 1, H, W) background map B.
        batch_mask_mixing: weight each image's squared error by the sum over the batch of the
            normalised masks at that location (the official broadcasting bug).

    Returns:
        (L_fg, L_bg, L_att), scalars in float32:
        ``L_fg = 1/N sum M_fg A^S_T A^C_T (F_S - F_T)^2`` (M_fg = fg / #nonzero per image),
        ``L_bg`` the same with M_bg, and
        ``L_att = sum|A^C_S - A^C_T| / (N H W) + sum|A^S_S - A^S_T| / N``.
    """
    s, t = student.float(), teacher.detach().float()
    n, _, h, w = t.shape
    with torch.no_grad():
        sp_t, ch_t = _attention(t, temperature)
        m_fg, m_bg = _normalise(fg.float()), _normalise(bg.float())
        if batch_mask_mixing:
            m_fg = m_fg.sum(dim=0, keepdim=True)
            m_bg = m_bg.sum(dim=0, keepdim=True)
    sp_s, ch_s = _attention(s, temperature)
    err = ((s - t) ** 2 * ch_t).sum(dim=1, keepdim=True) * sp_t  # (N, 1, H, W)
    loss_fg = (err * m_fg).sum() / n
    loss_bg = (err * m_bg).sum() / n
    loss_att = (ch_s - ch_t).abs().sum() / (n * h * w) + (sp_s - sp_t).abs().sum() / n
    return loss_fg, loss_bg, loss_att


def pgd_cls_loss(
    student: Tensor,
    teacher: Tensor,
    fg: Tensor,
    bg: Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    delta: float,
    level_weight: float = 1.0,
    batch_mask_mixing: bool = False,
) -> Tensor:
    """``L^cls_l = w_l (alpha L_fg + beta L_bg) + delta L_att`` (see :func:`pgd_cls_terms`)."""
    fg_term, bg_term, att = pgd_cls_terms(student, teacher, fg, bg, temperature, batch_mask_mixing)
    return level_weight * (alpha * fg_term + beta * bg_term) + delta * att


def pgd_reg_terms(
    student: Tensor, teacher: Tensor, weight: Tensor, temperature: float
) -> Tuple[Tensor, Tensor]:
    """The two terms of PGD's regression-feature loss at one level, on the key regions
    P = {W^reg > 0}.

    Args:
        student, teacher: (N, C, H, W) features; weight: (N, 1, H, W) W^reg.

    Returns:
        (L_rf, L_ra), scalars in float32:
        ``L_rf = 1/|P| sum_p W_p mean_c A^C_T (F_S - F_T)^2`` and
        ``L_ra = 1/|P| sum_p sum_c |A^C_S - A^C_T|`` (A^C = C softmax_c(|F| / T));
        both 0 (still depending on ``student``) when P is empty.
    """
    c = student.shape[1]
    pos = weight.reshape(-1) > 0  # (N*H*W,)
    if not bool(pos.any()):
        zero = student.float().sum() * 0.0
        return zero, zero
    s = student.float().permute(0, 2, 3, 1).reshape(-1, c)[pos]  # (|P|, C)
    t = teacher.detach().float().permute(0, 2, 3, 1).reshape(-1, c)[pos]
    w = weight.float().reshape(-1)[pos]
    ch_t = c * F.softmax(t.abs() / temperature, dim=1)
    ch_s = c * F.softmax(s.abs() / temperature, dim=1)
    feat = (((s - t) ** 2 * ch_t).mean(dim=1) * w).mean()
    att = (ch_s - ch_t).abs().sum() / s.shape[0]
    return feat, att


def pgd_reg_loss(
    student: Tensor,
    teacher: Tensor,
    weight: Tensor,
    *,
    temperature: float,
    gamma: float,
    delta: float,
) -> Tensor:
    """``L^reg_l = gamma L_rf + delta L_ra`` (see :func:`pgd_reg_terms`)."""
    feat, att = pgd_reg_terms(student, teacher, weight, temperature)
    return gamma * feat + delta * att


@KD_DISTILLER_REGISTRY.register()
class PGD(Distiller):
    """Prediction-guided distillation of one block (``TOWER_BLOCK``) of the cls and reg towers.

    Returns ``loss_kd_pgd_cls`` (sum over levels of :func:`pgd_cls_loss`) and
    ``loss_kd_pgd_reg`` (sum over levels of :func:`pgd_reg_loss`). The key regions come from the
    teacher's predictions (:meth:`key_region_maps`). Choices (OUR INTERPRETATION, spec
    ambiguities):

    * masks are normalised and applied per image; the official cross-image broadcasting is
      available as ``official_batch_mask_mixing`` (ambiguity 2);
    * points are read as (x, y); the official (y, x) reading of anchor-free heads is available as
      ``official_xy_swap`` (ambiguity 3); it swaps the coordinates passed to the key-region op,
      which changes exactly the in-box and background tests (the Gaussian weights of the
      candidates do not depend on the axis order);
    * deterministic Gaussian fit, Sigma + 1e-4 I instead of random jitter (ambiguity 4);
    * with A > 1 anchors per location (RetinaNet) the weights are computed per anchor and the max
      over a location's anchors is taken (the official configs all have A = 1);
    * one adapter per tower (student -> teacher width), shared by all levels as the head is;
    * the teacher's features are a detached target; its attentions carry no gradient, the
      student's do.
    """

    supported_kinds = ("dense",)
    vanishing_terms = ("loss_kd_pgd_cls", "loss_kd_pgd_reg")

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        num_anchors: int,
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        box2box_transform,
        level_weights: Sequence[float],
        xi_cls: float = 0.8,
        xi_reg: float = 0.6,
        topk: int = 30,
        temperature: float = 0.8,
        alpha: float = 0.04,
        beta: float = 0.02,
        gamma: float = 0.064,
        delta: float = 8e-4,
        tower_block: int = 0,
        mask_before_topk: bool = False,
        official_batch_mask_mixing: bool = False,
        official_xy_swap: bool = False,
        adapt: bool = True,
        backend: str = "auto",
        topk_over: str = "locations",
        exclude_padding: bool = True,
    ):
        """
        Args:
            num_classes: K; num_anchors: A, anchors per location (teacher = student).
            student_channels / teacher_channels: tower ("cls", "reg") -> width.
            box2box_transform: the teacher's, to decode its (N, A*4, Hi, Wi) box deltas.
            level_weights: w_l of the cls fg/bg terms, one per head level.
            Others: see ``MODEL.KD.PGD`` in :func:`add_pgd_config`.
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.box2box_transform = box2box_transform
        self.level_weights = [float(x) for x in level_weights]
        self.xis = (float(xi_cls), float(xi_reg))
        self.topk = int(topk)
        self.temperature = float(temperature)
        self.tower_block = int(tower_block)
        self.mask_before_topk = bool(mask_before_topk)
        self.backend = str(backend)
        if topk_over not in ("locations", "anchors"):
            raise ValueError(
                f"MODEL.KD.PGD.TOPK_OVER must be 'locations' or 'anchors', got {topk_over!r}"
            )
        self.topk_over = topk_over
        self.exclude_padding = bool(exclude_padding)
        self.batch_mask_mixing = bool(official_batch_mask_mixing)
        self.alpha, self.beta, self.gamma, self.delta = (
            float(x) for x in (alpha, beta, gamma, delta)
        )
        self.xy_swap = bool(official_xy_swap)
        for tower in ("cls", "reg"):
            if student_channels[tower] != teacher_channels[tower] and not adapt:
                raise ValueError(
                    f"PGD: the {tower} towers have widths {student_channels[tower]} (student) and "
                    f"{teacher_channels[tower]} (teacher); set MODEL.KD.PGD.ADAPT True."
                )
        self.adapters = nn.ModuleDict(
            {t: build_adapter(student_channels[t], teacher_channels[t]) for t in ("cls", "reg")}
        )

    def extra_repr(self) -> str:
        return (
            f"xi={self.xis}, topk={self.topk}, topk_over={self.topk_over}, T={self.temperature}, "
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, delta={self.delta}, "
            f"level_weights={self.level_weights}, tower_block={self.tower_block}, "
            f"mask_before_topk={self.mask_before_topk}, "
            f"official_batch_mask_mixing={self.batch_mask_mixing}, "
            f"official_xy_swap={self.xy_swap}, exclude_padding={self.exclude_padding}"
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        p = cfg.MODEL.KD.PGD
        for role, spec in (("student", student), ("teacher", teacher)):
            if spec.kind != "dense" or not {"cls", "reg"} <= set(spec.tower_channels):
                raise ValueError(
                    f"MODEL.KD.DISTILLERS has PGD, which needs one-stage detectors with cls and "
                    f"reg towers; the {role} ({spec.arch}) has {sorted(spec.tower_channels)}. "
                    "Use a RetinaNet/FCOS-like student and teacher."
                )
        check_same_head_levels("PGD", student, teacher)
        if len(p.LEVEL_WEIGHTS) != len(student.head_in_features):
            raise ValueError(
                f"MODEL.KD.PGD.LEVEL_WEIGHTS has {len(p.LEVEL_WEIGHTS)} entries but the head has "
                f"{len(student.head_in_features)} levels {student.head_in_features}: give one "
                "weight per level."
            )
        if teacher.box2box_transform is None:
            raise ValueError(
                f"PGD decodes the teacher's boxes, but the teacher ({teacher.arch}) exposes no "
                "box2box_transform: use a dense teacher with a `box2box_transform` attribute."
            )
        if not 1 <= p.TOPK:
            raise ValueError(f"MODEL.KD.PGD.TOPK must be >= 1, got {p.TOPK}")
        if p.TEMPERATURE <= 0:
            raise ValueError(f"MODEL.KD.PGD.TEMPERATURE must be > 0, got {p.TEMPERATURE}")
        for key in ("XI_CLS", "XI_REG"):
            if not 0.0 <= p[key] <= 1.0:
                raise ValueError(f"MODEL.KD.PGD.{key} must be in [0, 1], got {p[key]}")
        return {
            "num_classes": teacher.num_classes,
            "num_anchors": teacher.num_anchors,
            "student_channels": {t: student.tower_channels[t] for t in ("cls", "reg")},
            "teacher_channels": {t: teacher.tower_channels[t] for t in ("cls", "reg")},
            "box2box_transform": teacher.box2box_transform,
            "level_weights": list(p.LEVEL_WEIGHTS),
            **{key.lower(): p[key] for key in _SCALAR_KEYS},
        }

    @torch.no_grad()
    def key_region_maps(
        self, teacher: DetectorOutputs, gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Key-region maps from the teacher's predictions.

        Args:
            teacher: needs ``predictions["cls_logits"]`` [(N, A*K, Hi, Wi)],
                ``predictions["box_deltas"]`` [(N, A*D, Hi, Wi)] (D = 4, or 4(n+1) edge-distribution
                logits for GFL, decoded by the teacher's transform) and ``anchors`` [Boxes
                (Hi*Wi*A, 4)].
            gt_instances: N instances with ``gt_boxes`` and ``gt_classes``.

        Returns:
            (W^cls, W^reg, B): three per-level lists of (N, 1, Hi, Wi) float32 maps; W in [0, 1]
            is the max over the A anchors of a location, B in {0, 1}.
        """
        logits = teacher.predictions["cls_logits"]
        deltas = teacher.predictions["box_deltas"]
        a, k = self.num_anchors, self.num_classes
        sizes = [x.shape[-2:] for x in logits]
        n = logits[0].shape[0]
        with torch.autocast(logits[0].device.type, enabled=False):
            scores = cat_dense_levels(logits, k).float().sigmoid()
            d = deltas[0].shape[1] // a  # 4, or 4 * (n + 1) for a distribution head (GFL)
            deltas = cat_dense_levels(deltas, d).float()  # (N, R, d)
            anchors = Boxes.cat(teacher.anchors).tensor.float()  # (R, 4)
            if anchors.shape[0] != scores.shape[1]:
                raise ValueError(
                    f"PGD: {anchors.shape[0]} teacher anchors for {scores.shape[1]} predictions; "
                    "check MODEL.ANCHOR_GENERATOR and the number of classes."
                )
            r = anchors.shape[0]
            boxes = self.box2box_transform.apply_deltas(
                deltas.reshape(-1, d), anchors[None].expand(n, r, 4).reshape(-1, 4)
            ).view(n, r, 4)
            points = (anchors[:, :2] + anchors[:, 2:]) * 0.5  # (R, 2) centres (x, y)
            valid = self._inside_images(teacher, anchors)  # (N, R) or None
            if valid is not None:  # padding: no score, no box, hence quality 0
                scores = scores * valid[..., None]
                boxes = boxes * valid[..., None]
            if self.xy_swap:
                points = points.flip(1)
            gt = pad_gt(gt_instances)
            by_location = a > 1 and self.topk_over == "locations"
            weights, background = key_region_weights(
                scores,
                boxes,
                points,
                *gt,
                self.xis,
                self.topk,
                self.mask_before_topk,
                self.backend,
                anchors_per_location=a if by_location else 1,
            )
        if a > 1 and not by_location:  # (h, w, a) order: A is the fastest axis of R in a level
            weights = weights.view(2, n, -1, a).amax(dim=-1)
            background = background.view(n, -1, a).amin(dim=-1)
        if valid is not None:
            valid = valid[:, ::a].to(weights.dtype)
            weights, background = weights * valid, background * valid
        counts = [int(h) * int(w) for h, w in sizes]

        def split(x: Tensor) -> List[Tensor]:
            return [m.reshape(n, 1, *hw) for m, hw in zip(x.split(counts, dim=1), sizes)]

        return split(weights[0]), split(weights[1]), split(background)

    def _inside_images(self, teacher: DetectorOutputs, anchors: Tensor):
        """(N, R) bool, whether each anchor's centre lies inside its image (not in the padding
        of the batch), or None when padding is not excluded (``exclude_padding`` False, or no
        image sizes)."""
        if not self.exclude_padding or teacher.images is None:
            return None
        hw = torch.tensor(teacher.images.image_sizes, device=anchors.device, dtype=anchors.dtype)
        centres = (anchors[:, :2] + anchors[:, 2:]) * 0.5
        return (centres[None, :, 0] < hw[:, None, 1]) & (centres[None, :, 1] < hw[:, None, 0])

    def _block(self, outputs: DetectorOutputs, tower: str, role: str) -> List[Tensor]:
        blocks = outputs.tower_blocks.get(tower, [])
        if not -len(blocks) <= self.tower_block < len(blocks):
            raise ValueError(
                f"MODEL.KD.PGD.TOWER_BLOCK is {self.tower_block} but the {role}'s {tower} tower "
                f"has {len(blocks)} blocks: choose 0..{len(blocks) - 1}."
            )
        return blocks[self.tower_block]

    def forward(self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances):
        if self.batch_mask_mixing and len(gt_instances) != 4:
            log_first_n(
                logging.WARNING,
                f"PGD: OFFICIAL_BATCH_MASK_MIXING with {len(gt_instances)} images per process; "
                "the official numbers come from 4 images per GPU (the mixing factor is the sum "
                "of the per-process batch's masks).",
                n=1,
                name=__name__,
            )
        w_cls, w_reg, bg = self.key_region_maps(teacher, gt_instances)
        terms: Dict[str, List[Tensor]] = {k: [] for k in _TERMS}
        for tower in ("cls", "reg"):
            s_levels = self._block(student, tower, "student")
            t_levels = self._block(teacher, tower, "teacher")
            if not len(s_levels) == len(t_levels) == len(w_cls) == len(self.level_weights):
                raise ValueError(
                    f"PGD: {len(s_levels)} student / {len(t_levels)} teacher {tower}-tower levels, "
                    f"{len(w_cls)} prediction levels, {len(self.level_weights)} "
                    "MODEL.KD.PGD.LEVEL_WEIGHTS: they must all be equal."
                )
            for lvl, (s, t) in enumerate(zip(s_levels, t_levels)):
                s = self.adapters[tower](s)
                if s.shape != t.shape or s.shape[-2:] != w_cls[lvl].shape[-2:]:
                    raise ValueError(
                        f"PGD level {lvl} {tower}: student {tuple(s.shape)}, teacher "
                        f"{tuple(t.shape)}, maps {tuple(w_cls[lvl].shape)} differ. Teacher and "
                        "student need the same input padding (size_divisibility) and strides."
                    )
                with torch.autocast(s.device.type, enabled=False):
                    if tower == "cls":
                        fg, bg_, att = pgd_cls_terms(
                            s, t, w_cls[lvl], bg[lvl], self.temperature, self.batch_mask_mixing
                        )
                        w = self.level_weights[lvl]
                        terms["fg"].append(w * self.alpha * fg)
                        terms["bg"].append(w * self.beta * bg_)
                        terms["cls_att"].append(self.delta * att)
                    else:
                        feat, att = pgd_reg_terms(s, t, w_reg[lvl], self.temperature)
                        terms["reg_feat"].append(self.gamma * feat)
                        terms["reg_att"].append(self.delta * att)
        sums = {k: torch.stack(v).sum() for k, v in terms.items()}
        _put_stats(w_cls, w_reg, bg, sums)
        return {
            "loss_kd_pgd_cls": sums["fg"] + sums["bg"] + sums["cls_att"],
            "loss_kd_pgd_reg": sums["reg_feat"] + sums["reg_att"],
        }


#: PGD's weighted loss terms, summed over levels, logged as ``pgd/<term>``: the cls tower's
#: foreground (w_l alpha L_fg), background (w_l beta L_bg) and attention (delta L_att) terms, the
#: reg tower's feature (gamma L_rf) and attention (delta L_ra) terms.
_TERMS = ("fg", "bg", "cls_att", "reg_feat", "reg_att")


def _put_stats(
    w_cls: List[Tensor], w_reg: List[Tensor], bg: List[Tensor], terms: Dict[str, Tensor]
) -> None:
    """Per-image means of the numbers of key-region / background locations and the weighted
    loss terms, when training."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage outside a trainer
        return
    n = w_cls[0].shape[0]
    counts = torch.stack(
        [
            sum((w > 0).sum() for w in w_cls),
            sum((w > 0).sum() for w in w_reg),
            sum(b.sum() for b in bg).long(),
        ]
    ).tolist()  # one device-to-host copy per step instead of one per level and map
    for name, count in zip(("num_fg_cls", "num_fg_reg", "num_bg"), counts):
        storage.put_scalar(f"pgd/{name}", count / n)
    values = torch.stack([terms[k].detach().float() for k in _TERMS]).tolist()
    for name, value in zip(_TERMS, values):
        storage.put_scalar(f"pgd/loss_{name}", value)
