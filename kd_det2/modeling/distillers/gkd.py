"""GKD + BMFI: gradient-guided knowledge distillation (Lan & Tian, WACV 2024).

* GKD: per neck level, a Grad-CAM-style importance map of teacher and student. Channel weights are
  the spatial mean of the gradient of the model's own detection loss with respect to the level's
  features; the map is the channel-weighted sum of the activations, ReLU, min-max normalised per
  image. The student imitates the teacher's map with an L1 loss.
* BMFI (box-aware multi-grained feature imitation): FGD-style feature imitation weighted by a
  box-aware foreground mask (each box with a Gaussian halo), the teacher's spatial and channel
  attention, an attention loss and a global term.

Maps are keyed by level name and computed on the training batch itself. The teacher's gradient
comes from its detection losses against the same targets: against the GT the wrapper computes
them (``needs = {"teacher_losses"}``); against pseudo targets this module does, from the neck
outputs the wrapper gives as leaves (``needs = {"teacher_leaves"}``). Either way the neck outputs
are leaves, and :func:`neck_total_gradients` adds the paths through the levels the
neck computes from other levels (P6/P7 from P5), which the student's gradient has by
construction. Interpretations are config switches; see docs/GKD.md.

Notation: N images, C channels, level l of size H x W, G boxes of an image, input (padded) size
H_in x W_in.
"""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from ...config.defaults import register_kd_config_hook
from ..connectors import build_adapter
from ..outputs import DetectorOutputs, ModelSpec
from .base import KD_DISTILLER_REGISTRY, Distiller, check_features

__all__ = [
    "GKD",
    "add_gkd_config",
    "attention",
    "background_mask",
    "bmfi_level_losses",
    "foreground_mask",
    "foreground_masks",
    "importance_map",
    "minmax_normalize",
    "neck_total_gradients",
    "pseudo_targets",
]

_EPS = 1e-7  # of the min-max normalisation (pytorch-grad-cam's)
CAM_TARGETS = ("gt", "pseudo")
BMFI_TERMS = ("fg", "bg", "att", "global")


@register_kd_config_hook
def add_gkd_config(cfg: CN) -> None:
    """Add ``MODEL.KD.GKD`` (defaults: GKD alone, the released configs' form)."""
    if "GKD" in cfg.MODEL.KD:
        return
    _C = cfg.MODEL.KD.GKD = CN()
    # Neck levels distilled, keyed by name in both models (same strides); [] = the levels the
    # student's head (two-stage: its RPN) reads. Faster R-CNN configs set p2-p5.
    _C.IN_FEATURES = []
    # beta: weight of "loss_kd_gkd" = beta * sum_l mean |M_T - M_S| (official: 0.5 GFL on
    # COCO-Traffic, 0.01 Faster R-CNN on COCO; the class default 0.05).
    _C.BETA = 0.5
    # Boxes the detection loss of each map is computed against: "gt", or "pseudo" (each model's
    # own confident detections on this batch, as the official code).
    _C.CAM_TARGET = "gt"
    # Pseudo targets: detections with score >= PSEUDO_SCORE_THRESH, at most PSEUDO_TOPK per image.
    _C.PSEUDO_SCORE_THRESH = 0.3
    _C.PSEUDO_TOPK = 10
    # True: weights mean |dL/dA| and activations |A| (the official code's effective form); False:
    # the signed weights mean dL/dA and ReLU(sum_k w_k A_k) (the paper's equations as relayed).
    _C.ABS = True
    # True: the student's map is differentiable through its activations (weights detached);
    # False: parity with the official code, whose maps carry no gradient (the term is a constant).
    _C.DIFFERENTIABLE = True
    # BMFI weights (official class defaults 1e-3, 1e-3, 0; the released configs use 0): alpha of
    # "loss_kd_bmfi_fg", gamma of "loss_kd_bmfi_att", lambda of "loss_kd_bmfi_global".
    _C.ALPHA = 0.0
    _C.GAMMA = 0.0
    _C.LAMBDA = 0.0
    # Weight of "loss_kd_bmfi_bg", the background imitation the official code computes but does
    # not add (0 = parity).
    _C.BG_WEIGHT = 0.0
    # Temperature T of the spatial and channel attention softmaxes.
    _C.T = 0.5


# ----------------------------------------------------------------------------- importance maps
def minmax_normalize(x: Tensor) -> Tensor:
    """Per image: (x - min) / (max(x - min) + 1e-7); (N, H, W) -> (N, H, W) in [0, 1]."""
    flat = x.flatten(1)
    shifted = flat - flat.amin(dim=1, keepdim=True)
    return (shifted / (shifted.amax(dim=1, keepdim=True) + _EPS)).view_as(x)


def importance_map(features: Tensor, grads: Tensor, absolute: bool = True) -> Tensor:
    """Gradient-guided importance map of one level.

    Args:
        features: A, (N, C, H, W); the map is differentiable through it.
        grads: dL/dA, (N, C, H, W); treated as a constant.
        absolute: w_k = mean_ij |dL/dA_kij| and |A| (official form); else w_k = mean_ij dL/dA_kij
            and A (signed, the paper's Eq. 1-3).

    Returns:
        M = Norm(ReLU(sum_k w_k A_k)) (|A_k| when ``absolute``), (N, H, W) float32, min-max
        normalised per image; the min and max are differentiable (the exact gradient of the
        normalised map).
    """
    a, g = features.float(), grads.detach().float()
    if absolute:
        a, g = a.abs(), g.abs()
    w = g.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    return minmax_normalize((w * a).sum(dim=1).clamp(min=0))


def neck_total_gradients(
    model: nn.Module, features: Dict[str, Tensor], bottom_up: Dict[str, Tensor], direct: dict
) -> Dict[str, Tensor]:
    """Gradients with respect to neck outputs computed as leaves -> the gradients with respect
    to them as the neck computes them.

    When the loss was differentiated with respect to neck outputs made leaves (the teacher's), a
    level that feeds other levels (detectron2 FPN ``top_block``: P6 = maxpool(P5), or P6/P7 from
    P5 or C5 with P7 from P6) misses the paths through them. The top block is run again on its
    (frozen) input and the chain rule adds them: total(o_i) = direct(o_i) + J^T direct(o_later).

    Args:
        model: the detector (its ``backbone`` may be an FPN with a ``top_block``).
        features: the neck outputs the loss was differentiated against, (N, C, Hi, Wi) each.
        bottom_up: the bottom-up outputs (the top block's input when it is not a neck level).
        direct: level name -> dL/d(level) with the levels as leaves (None where unused).

    Returns:
        level name -> dL/d(level) including the paths through the top block (zeros for None).
    """
    total = {
        k: torch.zeros_like(features[k], dtype=torch.float32) if v is None else v.float()
        for k, v in direct.items()
    }
    neck = getattr(model, "backbone", None)
    block = getattr(neck, "top_block", None)
    names = list(getattr(neck, "_out_features", []))
    if block is None or not names or not hasattr(block, "in_feature"):
        return total
    outs_names = names[-block.num_levels :]
    src = block.in_feature
    if not all(n in total for n in outs_names) or (src not in features and src not in bottom_up):
        return total
    leaf = features[src] if src in features else bottom_up[src].detach().requires_grad_()
    with torch.enable_grad(), torch.autocast(leaf.device.type, enabled=False):
        x = leaf.float()
        outs = block(x)
    d = [total[n] for n in outs_names]
    for i in range(len(outs) - 1):  # later outputs computed from earlier ones (P7 from P6)
        (extra,) = torch.autograd.grad(
            outs[i + 1 :], outs[i], d[i + 1 :], retain_graph=True, allow_unused=True
        )
        if extra is not None:
            total[outs_names[i]] = total[outs_names[i]] + extra
    if src in total:
        (extra,) = torch.autograd.grad(outs, x, d, allow_unused=True)
        if extra is not None:
            total[src] = total[src] + extra
    return total


def pseudo_targets(
    out: DetectorOutputs,
    score_thresh: float,
    topk: int,
    proposals: Optional[List[Instances]] = None,
) -> List[Instances]:
    """A model's own confident detections on this batch, as targets (``gt_boxes``,
    ``gt_classes``), decoded from its captured predictions by its own inference (score threshold,
    top-k, NMS as configured for testing), then kept if score >= ``score_thresh``, at most
    ``topk`` per image, in input-image pixels; empty boxes (zero width or height after clipping
    to the image) are dropped.

    Args:
        out: the model's captured outputs (dense: ``predictions``; two-stage: ``roi``).
        proposals: two-stage: the boxes the RoI outputs were computed on (the student's sampled
            proposals, for the teacher too); None for dense models.
    """
    from ..meta_arch.dense import PREDICTION_NAMES  # the wrappers import the distillers

    model = out.model
    off = torch.autocast(out.images.tensor.device.type, enabled=False)
    with torch.no_grad(), off:
        if proposals is not None:
            roi = (out.roi["cls_logits"].float(), out.roi["box_deltas"].float())
            dets, _ = model.roi_heads.box_predictor.inference(roi, proposals)
        else:
            preds = [
                [x.detach().float() for x in out.predictions[n]]
                for n in PREDICTION_NAMES
                if n in out.predictions
            ]
            levels = [x.detach().float() for x in out.level_features()]
            dets = model.forward_inference(out.images, levels, preds)
    targets = []
    for d in dets:
        d = d[(d.scores >= score_thresh) & d.pred_boxes.nonempty()]
        d = d[d.scores.argsort(descending=True)[:topk]]
        targets.append(Instances(d.image_size, gt_boxes=d.pred_boxes, gt_classes=d.pred_classes))
    return targets


def _loss_gradients(
    loss_fn, features: Dict[str, Tensor], wrt: Sequence[str], targets: List[Instances], seed: int
) -> List[Optional[Tensor]]:
    """d(sum of ``loss_fn(features, targets)``)/d(features[f]) for f in ``wrt``, the losses
    computed in float32, with the RNG seeded by ``seed`` (two-stage losses sample anchors: one
    seed gives teacher and student the same samples), statistics sent to a throwaway storage."""
    device = next(iter(features.values())).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), EventStorage(), torch.autocast(
        device.type, enabled=False
    ):
        torch.manual_seed(seed)
        losses = loss_fn({k: v.float() for k, v in features.items()}, targets)
    loss = sum(losses.values())
    inputs = [features[f] for f in wrt]
    if not loss.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True))


# ---------------------------------------------------------------------------------------- BMFI
def foreground_mask(boxes: Tensor, feature_hw: Tuple[int, int], input_hw: Tuple[int, int]):
    """Box-aware foreground mask of one image at one level.

    Each box (in input pixels) is mapped to the feature grid (x by W / W_in, y by H / H_in, min
    corners floored, max corners ceiled; w, h its size in cells) and gives, on the cells whose
    centre lies strictly within the 2w x 2h box of the same centre, exp(-((x - cx) / w)^2 / 2) *
    exp(-((y - cy) / h)^2 / 2), 1 on the box's own cells, all times 1 / (4wh); boxes combine by
    element-wise max. The patch is centred on the box wherever it is, clipped to the map.

    Args:
        boxes: (G, 4) XYXY in input-image pixels (the padded batch's frame).
        feature_hw: (H, W) of the level; input_hw: (H_in, W_in) of the padded input.

    Returns:
        (H, W) mask, zeros when G = 0.
    """
    return foreground_masks([boxes], feature_hw, input_hw)[0]


def foreground_masks(
    boxes: Sequence[Tensor], feature_hw: Tuple[int, int], input_hw: Tuple[int, int]
) -> Tensor:
    """:func:`foreground_mask` of every image of a batch at one level, without a loop over
    images or boxes.

    Args:
        boxes: per image, (G_i, 4) XYXY in input-image pixels.

    Returns:
        (N, H, W) masks.
    """
    h, w = feature_hw
    b = torch.cat([x.float().reshape(-1, 4) for x in boxes])  # (G, 4), G = sum G_i
    counts = torch.tensor([len(x) for x in boxes], device=b.device)
    if not len(b):
        return b.new_zeros(len(boxes), h, w)
    image = torch.repeat_interleave(torch.arange(len(boxes), device=b.device), counts)
    slot = torch.arange(len(b), device=b.device) - (counts.cumsum(0) - counts)[image]
    scale = b.new_tensor([w / input_hw[1], h / input_hw[0]] * 2)
    b = b * scale
    x0 = b[:, 0].floor().clamp(0, w - 1)
    y0 = b[:, 1].floor().clamp(0, h - 1)
    x1 = torch.maximum(b[:, 2].ceil().clamp(max=w), x0 + 1)
    y1 = torch.maximum(b[:, 3].ceil().clamp(max=h), y0 + 1)
    bw, bh = (x1 - x0)[:, None], (y1 - y0)[:, None]  # (G, 1)
    xs = torch.arange(w, device=b.device, dtype=b.dtype)[None] + 0.5  # cell centres (1, W)
    ys = torch.arange(h, device=b.device, dtype=b.dtype)[None] + 0.5
    dx = (xs - (x0 + x1)[:, None] / 2) / bw  # (G, W)
    dy = (ys - (y0 + y1)[:, None] / 2) / bh  # (G, H)
    gx = torch.exp(-0.5 * dx**2) * (dx.abs() < 1)
    gy = torch.exp(-0.5 * dy**2) * (dy.abs() < 1)
    in_x = (xs > x0[:, None]) & (xs < x1[:, None])
    in_y = (ys > y0[:, None]) & (ys < y1[:, None])
    patch = gy[:, :, None] * gx[:, None, :]  # (G, H, W)
    patch = torch.where(in_y[:, :, None] & in_x[:, None, :], torch.ones_like(patch), patch)
    patch = patch / (4 * bw * bh)[:, :, None]
    most = max(len(x) for x in boxes)
    out = b.new_zeros(len(boxes), most, h, w)  # (N, max G_i, H, W), zero padded
    out[image, slot] = patch
    return out.amax(dim=1)  # max over each image's boxes (patches >= 0)


def background_mask(fg: Tensor) -> Tensor:
    """M_bg = 1[M_fg = 0] / sum 1[M_fg = 0] per image; (N, H, W) -> (N, H, W)."""
    bg = (fg == 0).to(fg.dtype)
    return bg / bg.flatten(1).sum(dim=1).clamp(min=1)[:, None, None]


def attention(features: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """FGD-style attention of (N, C, H, W) features: spatial H*W * softmax_hw(mean_c |F| / T),
    (N, H, W), and channel C * softmax_c(mean_hw |F| / T), (N, C); float32."""
    a = features.float().abs()
    n, c, h, w = a.shape
    spatial = (h * w) * torch.softmax((a.mean(dim=1) / temperature).view(n, -1), dim=1)
    channel = c * torch.softmax(a.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.view(n, h, w), channel


def bmfi_level_losses(
    student: Tensor, teacher: Tensor, fg: Tensor, temperature: float
) -> Dict[str, Tensor]:
    """The BMFI terms of one level (unweighted).

    Args:
        student: F_S after the adapter, (N, C, H, W); teacher: F_T, (N, C, H, W).
        fg: M_fg, (N, H, W).

    Returns:
        {"fg": sum M_fg A^S_T A^C_T (F_S - F_T)^2 / N, "bg": the same with M_bg, "att":
        sum |A^C_S - A^C_T| / N + sum |A^S_S - A^S_T| / N, "global": sum A^S_T A^C_T
        (F_S - F_T)^2 / (N H W)}.
    """
    n, _, h, w = teacher.shape
    t = teacher.detach().float()
    s_t, c_t = attention(t, temperature)
    s_s, c_s = attention(student, temperature)
    weighted = (student.float() - t) ** 2 * s_t[:, None] * c_t[:, :, None, None]
    per_cell = weighted.sum(dim=1)  # (N, H, W)
    return {
        "fg": (fg * per_cell).sum() / n,
        "bg": (background_mask(fg) * per_cell).sum() / n,
        "att": ((c_s - c_t).abs().sum() + (s_s - s_t).abs().sum()) / n,
        "global": per_cell.sum() / (n * h * w),
    }


# ------------------------------------------------------------------------------------ distiller
@KD_DISTILLER_REGISTRY.register()
class GKD(Distiller):
    """GKD importance-map imitation, plus the BMFI terms whose weight is not 0.

    Returns ``loss_kd_gkd`` (when beta > 0) and ``loss_kd_bmfi_{fg,bg,att,global}`` (when their
    weights are > 0), each already weighted.
    """

    needs = frozenset({"teacher_leaves", "teacher_losses"})  # each instance: one or none
    vanishing_terms = tuple(["loss_kd_gkd"] + [f"loss_kd_bmfi_{t}" for t in BMFI_TERMS])
    level_key = "MODEL.KD.GKD.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        two_stage: bool = False,
        beta: float = 0.5,
        cam_target: str = "gt",
        pseudo_score_thresh: float = 0.3,
        pseudo_topk: int = 10,
        absolute: bool = True,
        differentiable: bool = True,
        bmfi_weights: Optional[Dict[str, float]] = None,
        temperature: float = 0.5,
    ):
        """
        Args:
            in_features: the neck levels distilled (same name in both models).
            student_channels, teacher_channels: level -> channels (adapters for BMFI when they
                differ).
            two_stage: the detectors are two-stage (losses sample anchors; pseudo targets come
                from the RoI outputs).
            bmfi_weights: BMFI term ("fg", "bg", "att", "global") -> weight; absent or 0: off.
            Others: see ``MODEL.KD.GKD`` in :func:`add_gkd_config`.
        """
        super().__init__()
        if cam_target not in CAM_TARGETS:
            raise ValueError(f"MODEL.KD.GKD.CAM_TARGET must be one of {CAM_TARGETS}: {cam_target}")
        self.levels = list(in_features)
        self.two_stage = bool(two_stage)
        self.beta = float(beta)
        self.cam_target = cam_target
        self.pseudo_score_thresh = float(pseudo_score_thresh)
        self.pseudo_topk = int(pseudo_topk)
        self.absolute = bool(absolute)
        self.differentiable = bool(differentiable)
        self.bmfi_weights = {k: float(v) for k, v in (bmfi_weights or {}).items() if v}
        unknown = set(self.bmfi_weights) - set(BMFI_TERMS)
        if unknown:
            raise ValueError(f"Unknown BMFI terms {sorted(unknown)}; known: {BMFI_TERMS}")
        if self.beta <= 0 and not self.bmfi_weights:
            raise ValueError("GKD: every weight is 0 (MODEL.KD.GKD.BETA, ALPHA, GAMMA, LAMBDA)")
        # what the wrapper computes for this instance (narrowing the class's needs): the
        # teacher's GT losses for maps against the GT; only its neck outputs as leaves for maps
        # against pseudo targets (their losses are computed here); nothing for BMFI alone
        if self.beta <= 0:
            self.needs = frozenset()
        elif cam_target == "gt":
            self.needs = frozenset({"teacher_losses"})
        else:
            self.needs = frozenset({"teacher_leaves"})
        self.temperature = float(temperature)
        self.adapters = nn.ModuleDict(
            {f: build_adapter(student_channels[f], teacher_channels[f]) for f in self.levels}
            if self.bmfi_weights
            else {}
        )

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, beta={self.beta}, target={self.cam_target}, "
            f"abs={self.absolute}, differentiable={self.differentiable}, bmfi={self.bmfi_weights}"
        )

    @classmethod
    def from_config(cls, cfg, student: ModelSpec, teacher: ModelSpec):
        p = cfg.MODEL.KD.GKD
        feats = list(p.IN_FEATURES) or list(student.head_in_features)
        check_features(feats, student, teacher, cls.level_key, "feature_shapes")
        for f in feats:
            strides = (student.feature_shapes[f].stride, teacher.feature_shapes[f].stride)
            if strides[0] != strides[1]:
                raise ValueError(
                    f"{cls.level_key}: level {f} has stride {strides[0]} in the student and "
                    f"{strides[1]} in the teacher; GKD compares maps cell by cell."
                )
        return {
            "in_features": feats,
            "student_channels": {f: s.channels for f, s in student.feature_shapes.items()},
            "teacher_channels": {f: s.channels for f, s in teacher.feature_shapes.items()},
            "two_stage": student.kind == "rcnn",
            "beta": p.BETA,
            "cam_target": p.CAM_TARGET,
            "pseudo_score_thresh": p.PSEUDO_SCORE_THRESH,
            "pseudo_topk": p.PSEUDO_TOPK,
            "absolute": p.ABS,
            "differentiable": p.DIFFERENTIABLE,
            "bmfi_weights": {"fg": p.ALPHA, "bg": p.BG_WEIGHT, "att": p.GAMMA, "global": p.LAMBDA},
            "temperature": p.T,
        }

    # ----------------------------------------------------------------------------- gradients
    def targets(self, out: DetectorOutputs, gt: List[Instances], proposals) -> List[Instances]:
        if self.cam_target == "gt":
            return gt
        return pseudo_targets(
            out, self.pseudo_score_thresh, self.pseudo_topk, proposals if self.two_stage else None
        )

    def gradients(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """dL_det/dA of every distilled level, (teacher, student), each level (N, C, H, W).

        GT targets: the detection losses of this step (the student's with ``retain_graph``; the
        teacher's, two-stage: on the student's sampled anchors and proposals). Pseudo targets:
        losses recomputed from the neck features with the models' ``detection_loss_fn`` (one RNG
        seed for both, so that a two-stage RPN samples alike for alike targets)."""
        t_feats = teacher.features
        names = list(t_feats)
        if self.cam_target != "gt":
            seed = int(torch.randint(2**31 - 1, ()))
            t_targets = self.targets(teacher, gt, student.proposals)
            s_targets = self.targets(student, gt, student.proposals)
            t_direct = _loss_gradients(teacher.detection_loss_fn, t_feats, names, t_targets, seed)
            s_grads = _loss_gradients(
                student.detection_loss_fn, student.features, self.levels, s_targets, seed
            )
        else:
            t_loss = sum(teacher.losses.values())
            t_direct = torch.autograd.grad(
                t_loss, [t_feats[f] for f in names], retain_graph=True, allow_unused=True
            )
            s_loss = sum(student.losses.values())
            s_grads = torch.autograd.grad(
                s_loss,
                [student.features[f] for f in self.levels],
                retain_graph=True,
                allow_unused=True,
            )
        t_total = neck_total_gradients(
            teacher.model, t_feats, teacher.backbone, dict(zip(names, t_direct))
        )
        s_total = {
            f: torch.zeros_like(student.features[f]) if g is None else g
            for f, g in zip(self.levels, s_grads)
        }
        return {f: t_total[f] for f in self.levels}, s_total

    # ------------------------------------------------------------------------------- forward
    def forward(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        if self.beta > 0:
            t_grads, s_grads = self.gradients(teacher, student, gt_instances)
            total = 0.0
            for f in self.levels:
                m_t = importance_map(teacher.features[f].detach(), t_grads[f], self.absolute)
                a_s = student.features[f]
                grad = contextlib.nullcontext() if self.differentiable else torch.no_grad()
                with grad:
                    m_s = importance_map(a_s, s_grads[f], self.absolute)
                total = total + (m_t - m_s).abs().mean()
            out["loss_kd_gkd"] = self.beta * total
        if self.bmfi_weights:
            terms = {k: 0.0 for k in self.bmfi_weights}
            input_hw = tuple(student.images.tensor.shape[-2:])
            for f in self.levels:
                s = self.adapters[f](student.features[f])
                t = teacher.features[f]
                boxes = [x.gt_boxes.tensor for x in gt_instances]
                fg = foreground_masks(boxes, tuple(t.shape[-2:]), input_hw)
                level = bmfi_level_losses(s, t, fg, self.temperature)
                terms = {k: v + level[k] for k, v in terms.items()}
            out.update({f"loss_kd_bmfi_{k}": w * terms[k] for k, w in self.bmfi_weights.items()})
        return out
