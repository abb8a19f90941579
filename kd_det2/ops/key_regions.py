"""Key predictive regions of PGD (Yang et al., ECCV 2022), vectorised over images and GTs.

For every GT box g of class c_g and every location a (all FPN levels flattened together):

1. quality ``q(a, g) = sigma(z_a,c_g)^(1 - xi) * IoU(box_a, g)^xi`` from the teacher's class
   probability and decoded box;
2. the top-K locations by q (over all levels jointly) are the candidates of g;
3. a 2-D Gaussian is fitted (maximum likelihood) to the K candidate centres, and each candidate
   gets ``exp(-1/2 (c - mu)^T Sigma^-1 (c - mu))`` (unnormalised, so at most 1);
4. weights are kept only where the location centre lies strictly inside g;
5. the map is the max over GTs; the background map is 1 where a centre lies in no GT box.

Deterministic by construction (OUR INTERPRETATION where the official code is random or
unspecified): Sigma + 1e-4 I instead of a random jitter of the centres; top-K ties go to the
lowest location index; the ranking key (:func:`quality_key`) gives equal keys to equal
inputs; the Gaussian's moments are exact integer sums when the centres lie on the half-pixel
grid (:func:`_gaussian_weights`), the same in any summation order. Work is vectorised over
images and GTs as (N, G, R) tensors; images are processed in chunks only when N * G * R exceeds
``MAX_PAIRS`` (memory bound).

Notation: N images, R locations (anchors) over all levels, G GTs per image (padded), K classes.
"""

import importlib.util
import logging
import os
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_ATOL",
    "BACKEND_ENV",
    "COV_EPS",
    "checked_triton",
    "MAX_PAIRS",
    "outputs_agree",
    "key_region_weights",
    "quality_key",
    "resolve_backend",
    "pad_gt",
    "points_inside_boxes",
    "reference_key_region_weights",
]

#: margin of the strict point-in-box test (official code: ``x - x1 > 1e-10`` on all four sides).
INSIDE_EPS = 1e-10
#: added to the diagonal of the candidates' covariance. OUR INTERPRETATION of the spec's
#: ambiguity 4: the official code jitters the centres by U(-0.05, 0.05) px to avoid a singular
#: covariance, which makes the weights random; Sigma + 1e-4 * I is deterministic.
COV_EPS = 1e-4
#: added to the determinant before dividing the adjugate by it (as the official code).
DET_EPS = 1e-10
#: floor of the IoU union, as mmdet's ``bbox_overlaps``.
UNION_EPS = 1e-6
#: largest N * G * R handled in one vectorised pass (about 0.5 GB of temporaries on CPU).
MAX_PAIRS = 1 << 25
#: environment variable that overrides ``backend="auto"``: "auto", "torch" or "triton".
BACKEND_ENV = "KD_DET2_KEY_REGIONS_BACKEND"
BACKENDS = ("auto", "torch", "triton")
#: largest topk of the Triton kernel (its running top-k lives in registers); "auto" falls back to
#: the PyTorch implementation above it.
TRITON_MAX_TOPK = 256
#: device -> whether the kernel matched the PyTorch path on its first "auto" call there.
_AUTO_CHECKED: Dict[str, bool] = {}
#: "auto" keeps the kernel if its weights differ from PyTorch's by at most this (absolute) and
#: its background map is identical. The selection is exact in both implementations; the weights
#: can differ by about one float32 ulp where the float64 ``exp`` (CPU) or the float64 sums of
#: centres off the half-pixel grid differ in their last bits. A different selection changes
#: the Gaussian fit, hence weights by far more.
AUTO_ATOL = 1e-6
#: largest |2 c| (c: a centre in pixels) for which the Gaussian's moments are exact integers
#: (half-pixel units), and largest number of fitted centres: with both bounds every integer
#: below stays under 2^62.
GRID_MAX = 2**22
EXACT_MAX_K = 512


def pad_gt(instances: List[Instances]) -> Tuple[Tensor, Tensor, Tensor]:
    """Pad per-image GTs into batch tensors.

    Args:
        instances: N :class:`Instances`, each with ``gt_boxes`` (Gi, 4) XYXY and ``gt_classes``.

    Returns:
        gt_boxes (N, G, 4) float32, gt_classes (N, G) long, gt_valid (N, G) bool, with
        G = max_i Gi; padding has zero boxes, class 0 and ``gt_valid`` False.
    """
    n = len(instances)
    g = max((len(x) for x in instances), default=0)
    device = instances[0].gt_boxes.tensor.device if n else torch.device("cpu")
    boxes = torch.zeros(n, g, 4, device=device)
    classes = torch.zeros(n, g, dtype=torch.long, device=device)
    valid = torch.zeros(n, g, dtype=torch.bool, device=device)
    for i, inst in enumerate(instances):
        k = len(inst)
        boxes[i, :k] = inst.gt_boxes.tensor.float()
        classes[i, :k] = inst.gt_classes
        valid[i, :k] = True
    return boxes, classes, valid


def points_inside_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Strict point-in-box test with ``INSIDE_EPS`` margins (``x - x1 > eps`` on all sides).

    Args:
        points: (R, 2) centres (x, y).
        boxes: (N, G, 4) XYXY.

    Returns:
        (N, G, R) bool.
    """
    n, g, r = boxes.shape[0], boxes.shape[1], points.shape[0]
    x, y = (points[:, i].contiguous().view(1, 1, r) for i in range(2))
    x1, y1, x2, y2 = (boxes[..., i].contiguous().view(n, g, 1) for i in range(4))
    # in-place ops on preallocated buffers: large temporaries dominate the CPU time
    diff = torch.empty((n, g, r), dtype=torch.float32, device=boxes.device)
    inside = torch.gt(torch.sub(x, x1, out=diff), INSIDE_EPS)
    side = torch.empty_like(inside)
    for a, b in ((y, y1), (x2, x), (y2, y)):
        inside.logical_and_(torch.gt(torch.sub(a, b, out=diff), INSIDE_EPS, out=side))
    return inside


def _pairwise_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of (N, R, 4) predictions with (N, G, 4) GTs -> (N, G, R) float32; the union is floored
    at ``UNION_EPS`` and degenerate (inverted) boxes have zero area."""
    n, r, g = pred.shape[0], pred.shape[1], gt.shape[1]
    p = [pred[..., i].contiguous().view(n, 1, r) for i in range(4)]
    q = [gt[..., i].contiguous().view(n, g, 1) for i in range(4)]
    area_p = (p[2] - p[0]).clamp_(min=0).mul_((p[3] - p[1]).clamp_(min=0))
    area_g = (q[2] - q[0]).clamp_(min=0).mul_((q[3] - q[1]).clamp_(min=0))
    tmp = torch.empty((n, g, r), dtype=torch.float32, device=pred.device)
    inter = torch.minimum(p[2], q[2]).sub_(torch.maximum(p[0], q[0], out=tmp)).clamp_(min=0)
    h = torch.minimum(p[3], q[3]).sub_(torch.maximum(p[1], q[1], out=tmp)).clamp_(min=0)
    inter.mul_(h)
    union = torch.add(area_p, area_g, out=h).sub_(inter).clamp_(min=UNION_EPS)
    return inter.div_(union)


def _pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` in float64 rounded to float32: vectorised and scalar ``pow`` kernels
    may differ in the last bit, so equal inputs at different positions of a tensor could
    otherwise get different results and break ties arbitrarily."""
    if exponent == 0.0:
        return torch.ones_like(x, dtype=torch.float32)
    if exponent == 1.0:
        return x.float()
    return torch.pow(x.double(), exponent).float()


def quality_key(prob: Tensor, iou: Tensor, xi: float) -> Tensor:
    """Ranking key of ``q = p^(1 - xi) * IoU^xi``: a float32 increasing function of q.

    ``q^(1/xi) = p^((1 - xi)/xi) * IoU`` for xi >= 0.5 and ``q^(1/(1 - xi)) = p *
    IoU^(xi/(1 - xi))`` otherwise: one power with an exponent in [0, 1] (no underflow) and one
    exactly rounded product, so equal (p, IoU) always give equal keys and q = 0 gives 0.

    Args:
        prob, iou: float32 tensors of the same shape, values in [0, 1].
    """
    if xi >= 0.5:
        return torch.mul(_pow(prob, (1.0 - xi) / xi), iou)
    return torch.mul(_pow(iou, xi / (1.0 - xi)), prob)


def _stable_topk(key: Tensor, k: int) -> Tensor:
    """Indices of the k largest keys along the last dim; ties go to the lowest index.

    Same selection as ``torch.sort(key, descending=True, stable=True).indices[..., :k]``: one
    ``topk`` decides every row whose k-th largest key is not tied with an unselected location;
    only the other rows (e.g. GTs with fewer than k non-zero keys) are sorted.

    Args:
        key: (..., R) without NaN; k in [1, R].

    Returns:
        (..., k) long indices.
    """
    values, idx = key.topk(k, dim=-1, sorted=False)
    kth = values.amin(dim=-1, keepdim=True)
    ambiguous = (key >= kth).sum(dim=-1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero(as_tuple=True)
        idx[rows] = torch.sort(key[rows], dim=-1, descending=True, stable=True).indices[..., :k]
    return idx


def _gaussian_weights(centres: Tensor, valid: Tensor) -> Tensor:
    """MLE 2-D Gaussian of the valid candidates of each GT, evaluated at each candidate.

    ``Sigma = mean (c - mu)(c - mu)^T + COV_EPS * I``; ``Sigma^-1 = adj(Sigma) / (det + DET_EPS)``;
    ``w = exp(-1/2 (c - mu)^T Sigma^-1 (c - mu))``; a single candidate gets 1.

    Exact moments: when every fitted centre lies on the half-pixel grid (``u = 2 c`` an integer,
    |u| <= ``GRID_MAX``, at most ``EXACT_MAX_K`` centres; locations at (i + 0.5) * stride or at
    multiples of stride / 2 always are), the sums ``m``, ``S_u = sum u``, ``S_uv = sum u v`` are
    computed in int64, hence exactly whatever the summation order, and
    ``Sigma = (m S_uv - S_u S_v) / (4 m^2)``, ``c - mu = (m u - S_u) / (2 m)`` each round once
    when converted to float64. Otherwise (e.g. anchor centres off the grid by rounding) the
    moments are float64 sums, exact only up to their summation order. The Triton kernel computes
    the same expressions (see :mod:`~kd_det2.ops.key_regions_triton`).

    Args:
        centres: (..., k, 2) candidate centres (float32 pixels).
        valid: (..., k) bool; invalid candidates are left out of the fit and get 0.

    Returns:
        (..., k) float64 weights in [0, 1].
    """
    c = centres.float()
    u = c * 2.0
    lane_on = ((u == u.trunc()) & (u.abs() <= GRID_MAX)).all(dim=-1)  # (..., k)
    grid = (lane_on | ~valid).all(dim=-1, keepdim=True) & (valid.shape[-1] <= EXACT_MAX_K)
    ui = torch.where((valid & lane_on)[..., None], u, 0.0).long()
    exact = _exact_moments(ui[..., 0], ui[..., 1], valid)
    approx = _float_moments(c.double(), valid)
    sxx, syy, sxy, dx, dy = (torch.where(grid, a, b) for a, b in zip(exact, approx))
    det = sxx * syy - sxy * sxy
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / (det + DET_EPS)
    return torch.exp(-0.5 * maha) * valid


def _exact_moments(ux: Tensor, uy: Tensor, valid: Tensor) -> Tuple[Tensor, ...]:
    """Integer moments of half-pixel coordinates ux, uy (..., k) int64 (0 where not valid) ->
    float64 sxx, syy, sxy (..., 1) (regularised) and dx, dy (..., k), in pixels."""
    m = valid.long().sum(dim=-1, keepdim=True).clamp(min=1)
    sx, sy = ux.sum(dim=-1, keepdim=True), uy.sum(dim=-1, keepdim=True)
    cxx = m * (ux * ux).sum(dim=-1, keepdim=True) - sx * sx  # 4 m^2 var(x), exact
    cyy = m * (uy * uy).sum(dim=-1, keepdim=True) - sy * sy
    cxy = m * (ux * uy).sum(dim=-1, keepdim=True) - sx * sy
    den, two_m = (4 * m * m).double(), (2 * m).double()
    return (
        cxx.double() / den + COV_EPS,
        cyy.double() / den + COV_EPS,
        cxy.double() / den,
        (m * ux - sx).double() / two_m,
        (m * uy - sy).double() / two_m,
    )


def _float_moments(c: Tensor, valid: Tensor) -> Tuple[Tensor, ...]:
    """Float64 moments of centres c (..., k, 2): the same outputs as :func:`_exact_moments`."""
    v = valid.double().unsqueeze(-1)
    m = v.sum(dim=-2, keepdim=True).clamp(min=1.0)  # (..., 1, 1)
    mu = (c * v).sum(dim=-2, keepdim=True) / m
    d = (c - mu) * v
    dx, dy = d[..., 0], d[..., 1]
    m = m[..., 0]
    sxx = (dx * dx).sum(dim=-1, keepdim=True) / m + COV_EPS
    syy = (dy * dy).sum(dim=-1, keepdim=True) / m + COV_EPS
    sxy = (dx * dy).sum(dim=-1, keepdim=True) / m
    return sxx, syy, sxy, dx, dy


def resolve_backend(backend: str, device: torch.device, topk: int = 30) -> str:
    """The implementation :func:`key_region_weights` runs: "torch" or "triton".

    "auto" is replaced by the environment variable ``KD_DET2_KEY_REGIONS_BACKEND`` when set,
    then means "triton" for CUDA tensors when triton imports (and topk is within the kernel's
    limit), "torch" otherwise. A forced "triton" on tensors it cannot run on raises in the
    kernel's launcher.
    """
    if backend not in BACKENDS:
        raise ValueError(f"key_region_weights: unknown backend '{backend}' (use {BACKENDS})")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}='{backend}' is not one of {BACKENDS}")
    if backend == "auto":
        on_gpu = torch.device(device).type == "cuda" and 1 <= topk <= TRITON_MAX_TOPK
        use = on_gpu and importlib.util.find_spec("triton") is not None
        backend = "triton" if use else "torch"
    return backend


def outputs_agree(fast: Tuple[Tensor, Tensor], ref: Tuple[Tensor, Tensor]) -> Tuple[bool, float]:
    """Whether the kernel's (weights, background) match PyTorch's: identical background, weights
    within ``AUTO_ATOL``. Returns (agree, max abs difference)."""
    (w, b), (rw, rb) = fast, ref
    if w.shape != rw.shape or b.shape != rb.shape:
        return False, float("inf")
    diff = float((w - rw).abs().max()) if w.numel() else 0.0
    diff = max(diff, float((b - rb).abs().max()) if b.numel() else 0.0)
    same = torch.equal(b, rb) and diff <= AUTO_ATOL
    return same, diff


def _all_ranks(ok: bool, device: torch.device) -> bool:
    """``ok`` on every rank of the default process group (all-reduce MIN), or ``ok`` alone when
    not distributed; so that "auto" makes one decision for the whole run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return ok
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def checked_triton(device: str, run_triton: Callable, run_torch: Callable):
    """Run the kernel where "auto" chose it, verified against PyTorch on first use per device.

    The first call on ``device`` runs both; the kernel is kept for that device only if it ran and
    its outputs agree with the PyTorch path's (:func:`outputs_agree`: same background, weights
    within ``AUTO_ATOL``) on every rank (under torch.distributed the
    verdicts are all-reduced, so all ranks keep or drop the kernel together), otherwise a warning
    is logged and every later call there uses PyTorch (a forced ``backend="triton"`` skips this).

    Returns:
        the outputs of the implementation in use.
    """
    state = _AUTO_CHECKED.get(device)
    if state is not None:
        return run_triton() if state else run_torch()
    try:
        fast, error = run_triton(), None
    except Exception as e:  # compile or launch failure on this device/toolchain
        fast, error = None, e
    ref = run_torch()
    same, diff = outputs_agree(fast, ref) if error is None else (False, float("nan"))
    agreed = _all_ranks(same, ref[0].device)
    _AUTO_CHECKED[device] = agreed
    if error is not None:
        logger.warning(
            f"key regions: the Triton kernel failed on {device} ({error!r}); using PyTorch"
        )
    elif not same:
        logger.warning(
            f"key regions: the Triton kernel differs from PyTorch on {device} (max abs "
            f"difference {diff:.3g}); using PyTorch. Set backend 'torch' to skip this check."
        )
    elif not agreed:
        logger.warning(
            "key regions: the Triton kernel differs from PyTorch on another rank; using PyTorch"
        )
    else:
        logger.info(f"key regions: the Triton kernel matches PyTorch on {device}; using it")
    return fast if agreed else ref


def key_region_weights(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    alphas: Sequence[float] = (0.8, 0.6),
    topk: int = 30,
    mask_before_topk: bool = False,
    backend: str = "auto",
    anchors_per_location: int = 1,
) -> Tuple[Tensor, Tensor]:
    """PGD's prediction-guided weights W (one map per xi in ``alphas``) and background map B.

    Vectorised over images and GTs ((N, G, R) tensors); computed in float32 (the Gaussian in
    float64) without gradient, whatever the input dtype.

    Args:
        scores: (N, R, K) teacher class probabilities (after sigmoid), levels concatenated.
        pred_boxes: (N, R, 4) teacher decoded boxes, XYXY pixels.
        points: (R, 2) location centres (x, y) in pixels, same order as ``scores``.
        gt_boxes: (N, G, 4) XYXY, padded (see :func:`pad_gt`).
        gt_classes: (N, G) long, padded.
        gt_valid: (N, G) bool, False for padding; padded GTs contribute nothing.
        alphas: the xi of each map, e.g. (xi_cls, xi_reg); xi = 1 ranks by IoU only, xi = 0 by
            score only.
        topk: K candidates per GT; ``min(topk, R)`` when there are fewer locations. Ties are
            broken deterministically, lowest location index first.
        mask_before_topk: False (default, official code order): top-K over all locations, the
            Gaussian fitted on those K, the in-box mask applied afterwards (so fewer than K may
            survive). True (paper's Eq. 1): only in-box locations can be candidates; the Gaussian
            is fitted on the in-box candidates (fewer than K when the box holds fewer centres).
        backend: "torch" (this PyTorch implementation), "triton" (the fused kernel of
            :mod:`~kd_det2.ops.key_regions_triton`; CUDA tensors, or CPU under
            ``TRITON_INTERPRET=1``) or "auto" (see :func:`resolve_backend`; when "auto" picks the
            kernel, its first call on a device is checked against PyTorch, see
            :func:`checked_triton`).
        anchors_per_location: A > 1 (anchor heads with several anchors per location, R = L * A
            in (location, anchor) order, the A anchors of a location sharing its centre): rank
            locations, not anchors, by the best quality of their anchors,
            ``q(l, g) = max_a q(l a, g)``; the top-K locations are the candidates and the maps
            are per location. Always the PyTorch implementation.

    Returns:
        weights (len(alphas), N, R / A) in [0, 1], 0 outside every valid GT box;
        background (N, R / A) in {0, 1}: 1 where the centre lies inside no valid GT box.
    """
    a = int(anchors_per_location)
    if a < 1 or scores.shape[1] % a:
        raise ValueError(
            f"key_region_weights: {scores.shape[1]} predictions are not {a} anchors per location"
        )
    chosen = "torch" if a > 1 else resolve_backend(backend, scores.device, topk)
    if chosen == "triton":
        from .key_regions_triton import key_region_weights_triton

        args = (gt_boxes, gt_classes, gt_valid, alphas, topk, mask_before_topk)

        def run_triton():
            with torch.no_grad():
                return key_region_weights_triton(scores, pred_boxes, points, *args)

        if backend == "triton" or os.environ.get(BACKEND_ENV, "").strip().lower() == "triton":
            return run_triton()  # forced: no check, errors propagate
        return checked_triton(
            str(scores.device),
            run_triton,
            lambda: key_region_weights(scores, pred_boxes, points, *args, backend="torch"),
        )
    if topk < 1:
        raise ValueError(f"key_region_weights: topk must be >= 1, got {topk}")
    n, r, num_classes = scores.shape
    g = gt_boxes.shape[1]
    step = max(1, MAX_PAIRS // max(g * r, 1))
    if n > step:  # bound the memory of the (N, G, R) temporaries
        batch = (scores, pred_boxes, gt_boxes, gt_classes, gt_valid)
        chunks = [[x[i : i + step] for x in batch] for i in range(0, n, step)]
        args = (alphas, topk, mask_before_topk, backend, a)
        parts = [key_region_weights(s, p, points, b, c, v, *args) for s, p, b, c, v in chunks]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=0)
    with torch.no_grad():
        device = scores.device
        locations = r // a
        weights = torch.zeros(len(alphas), n, locations, device=device)
        if g == 0 or r == 0:
            return weights, torch.ones(n, locations, device=device)
        points = points.float()[::a]  # (L, 2): one centre per location
        gt = gt_boxes.float()
        valid_gt = gt_valid.bool()
        inside = points_inside_boxes(points, gt) & valid_gt[..., None]  # (N, G, L)
        background = (~inside.any(dim=1)).float()
        iou = _pairwise_iou(pred_boxes.float(), gt)
        index = gt_classes.long().clamp(0, num_classes - 1)[..., None].expand(n, g, r)
        prob_t = scores.float().nan_to_num(0.0).transpose(1, 2)  # (N, K, R)
        outside = ~inside if mask_before_topk else None
        k = min(int(topk), locations)
        for i, xi in enumerate(alphas):
            # quality_key(prob, iou, xi), with the power taken on (N, K, R) before the gather
            if xi >= 0.5:
                key = _pow(prob_t, (1.0 - xi) / xi).gather(1, index).mul_(iou)  # (N, G, R)
            else:
                key = _pow(iou, xi / (1.0 - xi)).mul_(prob_t.gather(1, index))
            if a > 1:  # the best anchor of each location (the key is increasing in q)
                key = key.view(n, g, locations, a).amax(dim=-1)  # (N, G, L)
            if outside is not None:
                key.masked_fill_(outside, -1.0)
            idx = _stable_topk(key, k)  # (N, G, k)
            cand_inside = inside.gather(2, idx)
            fit_on = cand_inside if mask_before_topk else valid_gt[..., None].expand_as(idx)
            w = _gaussian_weights(points[idx], fit_on).float() * cand_inside
            weights[i].scatter_reduce_(1, idx.view(n, g * k), w.view(n, g * k), "amax")
        return weights, background


def reference_key_region_weights(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    alphas: Sequence[float] = (0.8, 0.6),
    topk: int = 30,
    mask_before_topk: bool = False,
    anchors_per_location: int = 1,
) -> Tuple[Tensor, Tensor]:
    """Deliberately simple per-image, per-GT loop version of :func:`key_region_weights`.

    Slow; used only by the tests as the reference. Same arguments and returns.
    """
    n, r, _ = scores.shape
    a_per = int(anchors_per_location)
    locations = r // a_per
    weights = torch.zeros(len(alphas), n, locations)
    background = torch.ones(n, locations)
    pts = points.float().cpu()[::a_per]
    for img in range(n):
        for j in range(gt_boxes.shape[1]):
            if not bool(gt_valid[img, j]):
                continue
            x1, y1, x2, y2 = gt_boxes[img, j].float().cpu().tolist()
            inside = (
                (pts[:, 0] - x1 > INSIDE_EPS)
                & (pts[:, 1] - y1 > INSIDE_EPS)
                & (x2 - pts[:, 0] > INSIDE_EPS)
                & (y2 - pts[:, 1] > INSIDE_EPS)
            )
            background[img, inside] = 0.0
            pb = pred_boxes[img].float().cpu()
            iw = (torch.clamp(pb[:, 2], max=x2) - torch.clamp(pb[:, 0], min=x1)).clamp(min=0)
            ih = (torch.clamp(pb[:, 3], max=y2) - torch.clamp(pb[:, 1], min=y1)).clamp(min=0)
            area_p = (pb[:, 2] - pb[:, 0]).clamp(min=0) * (pb[:, 3] - pb[:, 1]).clamp(min=0)
            gb = gt_boxes[img, j].float().cpu()
            area_g = (gb[2] - gb[0]).clamp(min=0) * (gb[3] - gb[1]).clamp(min=0)
            iou = iw * ih / (area_p + area_g - iw * ih).clamp(min=UNION_EPS)
            prob = scores[img, :, int(gt_classes[img, j])].float().cpu()
            for i, xi in enumerate(alphas):
                q = quality_key(prob, iou, xi)
                q = torch.stack(
                    [q[loc * a_per : (loc + 1) * a_per].max() for loc in range(locations)]
                )
                if mask_before_topk:
                    q = torch.where(inside, q, torch.full_like(q, -1.0))
                order = torch.sort(q, descending=True, stable=True).indices[: min(topk, locations)]
                if mask_before_topk:
                    order = order[inside[order]]
                if len(order) == 0:
                    continue
                c = pts[order].double()
                mu = c.mean(dim=0)
                d = c - mu
                sigma = d.T @ d / len(order) + COV_EPS * torch.eye(2, dtype=torch.float64)
                det = sigma[0, 0] * sigma[1, 1] - sigma[0, 1] * sigma[1, 0]
                adj = torch.stack(
                    [
                        torch.stack([sigma[1, 1], -sigma[0, 1]]),
                        torch.stack([-sigma[1, 0], sigma[0, 0]]),
                    ]
                )
                inv = adj / (det + DET_EPS)
                for a, dk in zip(order.tolist(), d):
                    if not bool(inside[a]):
                        continue
                    w = float(torch.exp(-0.5 * dk @ inv @ dk))
                    weights[i, img, a] = max(float(weights[i, img, a]), w)
    return weights, background
