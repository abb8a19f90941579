"""Fused Triton kernel of PGD's key predictive regions (same semantics as ``key_regions.py``).

One program per (image, GT) scans all R locations in blocks of ``BLOCK``; for each block it
computes the IoU of the teacher's boxes with the GT and, for both maps (two xi) at once, the
quality key of :func:`~kd_det2.ops.key_regions.quality_key`, then merges the block into a
running top-k held in registers. The running top-k is ``KP`` (a power of two >= k) int64 values
packing ``(ordered key bits << 32) | (MAX_INDEX - index)``: one signed comparison ranks by key,
then by lowest location index (the reference's stable sort), and all values are distinct. A block
enters the merge only if its best possible packed key beats the current k-th one: outside the
GT (IoU 0, xi > 0) the key is exactly 0, so blocks far from the GT cost only the box loads, and
the class scores are read only where needed. The merge extracts the block's best value while it
beats the k-th (repeated arg-max, at most k steps). Then the Gaussian is fitted on the k
candidates in float64 and the weights go into ``out[map, image, location]`` with an atomic max
(non-negative floats: order-independent, hence deterministic). Padded GTs scan nothing.

Exactness: IoU, scores and keys are computed in float32 with the same operation order as the
PyTorch path (no FMA contraction: launched with ``enable_fp_fusion=False``; IEEE division
``div_rn``); the power is taken in float64 and rounded to float32 (CUDA: libdevice ``pow``, the
function PyTorch's CUDA ``pow`` calls). The CPU interpreter has no libdevice, so it uses
``exp2(e * log2(x))`` in float64 (relative error ~1e-15: the float32 key can differ by one ulp
with probability ~1e-7 per value). The Gaussian sums run in a different order than PyTorch's (a
few float64 ulps, invisible after rounding to float32 in practice). Inputs must be finite;
probabilities in [0, 1] (NaN scores become 0, as in the PyTorch path).

The background map is a second small kernel: one program per (image, block of locations), a
loop over the image's GTs.
"""

import math
from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from .key_regions import COV_EPS, DET_EPS, TRITON_MAX_TOPK

__all__ = ["COMPILE_OPTIONS", "MAX_TOPK", "key_region_weights_triton", "triton_runs_on"]

#: largest top-k handled by the kernel (register buffer of next_pow2(k) int64 per map).
MAX_TOPK = TRITON_MAX_TOPK
MAX_INDEX = tl.constexpr(2**31 - 1)  # locations are packed as MAX_INDEX - index (31 bits)
EMPTY = tl.constexpr(-(2**63))  # below every packed key: a free slot of the running top-k
FULL = tl.constexpr(2**63 - 1)  # above every packed key: a slot beyond k, never replaced
FLT_MAX = tl.constexpr(3.4028234663852886e38)
#: compile options of the main kernel: no FMA contraction, so float32 results match PyTorch's.
COMPILE_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)


@triton.jit
def _pack(key, idx):
    """float32 key (BLOCK,), int32 index -> int64, larger = better key, then lower index."""
    key = tl.where(key == 0.0, 0.0, key)  # -0.0 ranks as +0.0, as in torch.sort
    bits = key.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotonic in the float value
    return (ordered.to(tl.int64) << 32) | (-idx + MAX_INDEX).to(tl.int64)


@triton.jit
def _power(x, e, MODE: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """``x ** e`` of float32 x in float64, rounded to float32 (``key_regions._pow``); MODE 0:
    e = 0 (ones), 1: e = 1 (x), 2: general. (torch.pow's square root for e = 0.5 is
    unreachable: no float xi near 1/3 or 2/3 gives exactly 0.5.)"""
    if MODE == 0:
        y = tl.full(x.shape, 1.0, tl.float32)
    elif MODE == 1:
        y = x
    else:
        xd = x.to(tl.float64)
        if USE_LIBDEVICE:
            yd = libdevice.pow(xd, e)
        else:
            pos = xd > 0.0
            yd = tl.where(pos, tl.exp2(e * tl.log2(tl.where(pos, xd, 1.0))), 0.0)
        y = yd.to(tl.float32)
    return y


@triton.jit
def _key(p, iou, e, HI: tl.constexpr, MODE: tl.constexpr, USE_LIBDEVICE: tl.constexpr):
    """:func:`quality_key`: ``p^e * iou`` when xi >= 0.5 (HI), else ``iou^e * p``."""
    if HI:
        key = _power(p, e, MODE, USE_LIBDEVICE) * iou
    else:
        key = _power(iou, e, MODE, USE_LIBDEVICE) * p
    return key


@triton.jit
def _merge(buf, thr, pk, lanes, KP: tl.constexpr):
    """Merge the packed keys pk (BLOCK,) into the running top-k buf (KP,) whose smallest value
    is thr; returns the new (buf, thr)."""
    pk = tl.where(pk > thr, pk, EMPTY)
    top = tl.max(pk, axis=0)
    while top > thr:
        slot = tl.min(tl.where(buf == thr, lanes, KP), axis=0)
        buf = tl.where(lanes == slot, top, buf)
        pk = tl.where(pk == top, EMPTY, pk)
        thr = tl.min(buf, axis=0)
        top = tl.max(pk, axis=0)
    return buf, thr


@triton.jit
def _inside(x, y, gx1, gy1, gx2, gy2):
    """Strict point-in-box test with INSIDE_EPS margins (float32, as points_inside_boxes)."""
    return (x - gx1 > 1e-10) & (y - gy1 > 1e-10) & (gx2 - x > 1e-10) & (gy2 - y > 1e-10)


@triton.jit
def _fit_and_write(buf, lanes, k_eff, ok, points_ptr, gx1, gy1, gx2, gy2, out_ptr, cov_eps,
                   det_eps, MASK_BEFORE: tl.constexpr, USE_LIBDEVICE: tl.constexpr):  # fmt: skip
    """Gaussian (float64) on the k candidates in buf; atomic max of the in-box weights."""
    active = (lanes < k_eff) & ok
    idx = tl.where(active, -(buf & MAX_INDEX) + MAX_INDEX, 0).to(tl.int32)
    cx = tl.load(points_ptr + 2 * idx, mask=active, other=0.0)
    cy = tl.load(points_ptr + 2 * idx + 1, mask=active, other=0.0)
    inside = _inside(cx, cy, gx1, gy1, gx2, gy2) & active
    if MASK_BEFORE:
        v = inside.to(tl.float64)
    else:
        v = active.to(tl.float64)
    m = tl.maximum(tl.sum(v, axis=0), 1.0)
    cx = cx.to(tl.float64)
    cy = cy.to(tl.float64)
    dx = (cx - tl.sum(cx * v, axis=0) / m) * v
    dy = (cy - tl.sum(cy * v, axis=0) / m) * v
    sxx = tl.sum(dx * dx, axis=0) / m + cov_eps
    syy = tl.sum(dy * dy, axis=0) / m + cov_eps
    sxy = tl.sum(dx * dy, axis=0) / m
    det = sxx * syy - sxy * sxy
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / (det + det_eps)
    if USE_LIBDEVICE:
        w = libdevice.exp(-0.5 * maha) * v
    else:
        w = tl.exp(-0.5 * maha) * v
    tl.atomic_max(out_ptr + idx, w.to(tl.float32), mask=inside)


@triton.jit
def _key_regions_kernel(
    scores_ptr, boxes_ptr, points_ptr, gt_ptr, cls_ptr, valid_ptr, params_ptr, out_ptr,
    R, G, k_eff, s_sn, s_sr, s_sk, s_bn, s_br, s_bk, s_om,
    NUM_MAPS: tl.constexpr, HI0: tl.constexpr, MODE0: tl.constexpr, HI1: tl.constexpr,
    MODE1: tl.constexpr, SKIP: tl.constexpr, MASK_BEFORE: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr,
):  # fmt: skip
    """One program per (image, GT): top-k of the quality over R locations, Gaussian, atomic max.

    scores (N, R, K) any float dtype (strides s_s*); boxes (N, R, 4) (strides s_b*); points
    (R, 2) float32; gt (N, G, 4) float32; cls (N, G) int32 in [0, K); valid (N, G) int32;
    params float64 [e0, e1, COV_EPS, DET_EPS]; out (NUM_MAPS, N, R) float32 (map stride s_om),
    zero-initialised. SKIP: every xi > 0 (zero IoU implies a zero key).
    """
    pid = tl.program_id(0)
    img = pid // G
    ok = tl.load(valid_ptr + pid) != 0
    cls = tl.load(cls_ptr + pid)
    gx1 = tl.load(gt_ptr + 4 * pid)
    gy1 = tl.load(gt_ptr + 4 * pid + 1)
    gx2 = tl.load(gt_ptr + 4 * pid + 2)
    gy2 = tl.load(gt_ptr + 4 * pid + 3)
    area_g = tl.maximum(gx2 - gx1, 0.0) * tl.maximum(gy2 - gy1, 0.0)
    e0 = tl.load(params_ptr)
    e1 = tl.load(params_ptr + 1)
    s_base = scores_ptr + img.to(tl.int64) * s_sn + cls.to(tl.int64) * s_sk
    b_base = boxes_ptr + img.to(tl.int64) * s_bn
    lanes = tl.arange(0, KP)
    buf0 = tl.where(lanes < k_eff, EMPTY, FULL)
    thr0 = tl.min(buf0, axis=0)
    buf1 = buf0
    thr1 = thr0
    r_end = tl.where(ok, R, 0)  # padded GTs scan nothing
    for start in range(0, r_end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        in_r = offs < R
        bo = b_base + offs.to(tl.int64) * s_br
        px1 = tl.load(bo, mask=in_r, other=0.0).to(tl.float32)
        py1 = tl.load(bo + s_bk, mask=in_r, other=0.0).to(tl.float32)
        px2 = tl.load(bo + 2 * s_bk, mask=in_r, other=0.0).to(tl.float32)
        py2 = tl.load(bo + 3 * s_bk, mask=in_r, other=0.0).to(tl.float32)
        area_p = tl.maximum(px2 - px1, 0.0) * tl.maximum(py2 - py1, 0.0)
        iw = tl.maximum(tl.minimum(px2, gx2) - tl.maximum(px1, gx1), 0.0)
        ih = tl.maximum(tl.minimum(py2, gy2) - tl.maximum(py1, gy1), 0.0)
        inter = iw * ih
        union = tl.maximum(area_p + area_g - inter, 1e-6)
        iou = tl.math.div_rn(inter, union)
        # upper bound of the key: +inf, or exactly 0 where IoU = 0 (xi > 0), -1 outside the box
        ub = tl.full([BLOCK], float("inf"), tl.float32)
        if SKIP:
            ub = tl.where(iou > 0.0, ub, 0.0)
        if MASK_BEFORE:
            lx = tl.load(points_ptr + 2 * offs, mask=in_r, other=0.0)
            ly = tl.load(points_ptr + 2 * offs + 1, mask=in_r, other=0.0)
            inside = _inside(lx, ly, gx1, gy1, gx2, gy2)
            ub = tl.where(inside, ub, -1.0)
        best = tl.max(tl.where(in_r, _pack(ub, offs), EMPTY), axis=0)
        need = best > thr0
        if NUM_MAPS == 2:
            need = need | (best > thr1)
        if need:
            p = tl.load(s_base + offs.to(tl.int64) * s_sr, mask=in_r, other=0.0).to(tl.float32)
            p = tl.where(p != p, 0.0, tl.minimum(tl.maximum(p, -FLT_MAX), FLT_MAX))  # nan_to_num
            key = _key(p, iou, e0, HI0, MODE0, USE_LIBDEVICE)
            if MASK_BEFORE:
                key = tl.where(inside, key, -1.0)
            buf0, thr0 = _merge(buf0, thr0, tl.where(in_r, _pack(key, offs), EMPTY), lanes, KP)
            if NUM_MAPS == 2:
                key = _key(p, iou, e1, HI1, MODE1, USE_LIBDEVICE)
                if MASK_BEFORE:
                    key = tl.where(inside, key, -1.0)
                pk = tl.where(in_r, _pack(key, offs), EMPTY)
                buf1, thr1 = _merge(buf1, thr1, pk, lanes, KP)
    cov_eps = tl.load(params_ptr + 2)
    det_eps = tl.load(params_ptr + 3)
    out_img = out_ptr + img.to(tl.int64) * R
    _fit_and_write(buf0, lanes, k_eff, ok, points_ptr, gx1, gy1, gx2, gy2, out_img, cov_eps,
                   det_eps, MASK_BEFORE, USE_LIBDEVICE)  # fmt: skip
    if NUM_MAPS == 2:
        _fit_and_write(buf1, lanes, k_eff, ok, points_ptr, gx1, gy1, gx2, gy2, out_img + s_om,
                       cov_eps, det_eps, MASK_BEFORE, USE_LIBDEVICE)  # fmt: skip


@triton.jit
def _background_kernel(points_ptr, gt_ptr, valid_ptr, out_ptr, R, G, BLOCK: tl.constexpr):
    """Program (image, block): out[image, r] = 1 if point r lies in no valid GT box, else 0.
    points (R, 2) float32, gt (N, G, 4) float32, valid (N, G) int32, out (N, R) float32."""
    img = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_r = offs < R
    x = tl.load(points_ptr + 2 * offs, mask=in_r, other=0.0)
    y = tl.load(points_ptr + 2 * offs + 1, mask=in_r, other=0.0)
    covered = tl.zeros([BLOCK], dtype=tl.int1)
    for j in range(0, G):
        pair = img * G + j
        gt = gt_ptr + 4 * pair
        inside = _inside(x, y, tl.load(gt), tl.load(gt + 1), tl.load(gt + 2), tl.load(gt + 3))
        covered = covered | (inside & (tl.load(valid_ptr + pair) != 0))
    tl.store(out_ptr + img.to(tl.int64) * R + offs, tl.where(covered, 0.0, 1.0), mask=in_r)


def _interpreted() -> bool:
    kernel = type(_key_regions_kernel).__name__ == "InterpretedFunction"
    if kernel != (type(tl.standard.max).__name__ == "InterpretedFunction"):
        raise RuntimeError(
            "TRITON_INTERPRET changed between the imports of triton and of key_regions_triton: "
            "set it before anything imports triton (torch may), e.g. in the environment."
        )
    return kernel


def triton_runs_on(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of ``device``: CUDA, or CPU under the interpreter
    (``TRITON_INTERPRET=1`` set before this module was imported)."""
    return device.type == "cuda" or (device.type == "cpu" and _interpreted())


def _mode(e: float) -> int:
    return {0.0: 0, 1.0: 1}.get(e, 2)


def key_region_weights_triton(
    scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    alphas: Sequence[float] = (0.8, 0.6),
    topk: int = 30,
    mask_before_topk: bool = False,
    block: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Triton version of :func:`~kd_det2.ops.key_regions.key_region_weights` (same arguments,
    shapes and returns: weights (len(alphas), N, R) float32, background (N, R) float32).

    Two maps per launch (one launch per pair of ``alphas``) plus one background launch.
    ``block``: locations per step of the scan (a power of two; 0 = min(1024, next_pow2(R))).
    """
    device = scores.device
    if not triton_runs_on(device):
        raise RuntimeError(
            f"key_region_weights: backend 'triton' needs CUDA tensors (got {device}); on CPU set "
            "TRITON_INTERPRET=1 before triton is imported (Triton's interpreter, slow), or use "
            "backend 'torch'."
        )
    if not 1 <= topk:
        raise ValueError(f"key_region_weights: topk must be >= 1, got {topk}")
    if any(not 0.0 <= float(xi) <= 1.0 for xi in alphas):
        raise ValueError(f"key_region_weights: backend 'triton' needs xi in [0, 1], got {alphas}")
    n, r, num_classes = scores.shape
    g = gt_boxes.shape[1]
    if r >= 2**31:
        raise ValueError(f"key_region_weights: backend 'triton' handles < 2^31 locations, got {r}")
    weights = torch.zeros(len(alphas), n, r, device=device)
    background = torch.ones(n, r, device=device)
    if n == 0 or g == 0 or r == 0 or len(alphas) == 0:
        return weights, background
    k = min(int(topk), r)
    if k > MAX_TOPK:
        raise ValueError(f"key_region_weights: backend 'triton' supports topk <= {MAX_TOPK}")
    kp = max(2, triton.next_power_of_2(k))
    block = block or min(1024, max(16, triton.next_power_of_2(r)))
    pred_boxes = pred_boxes.to(device)
    points = points.to(device, torch.float32).contiguous()
    gt = gt_boxes.to(device, torch.float32).contiguous()
    valid = gt_valid.to(device, torch.int32).contiguous()
    cls = gt_classes.to(device).long().clamp(0, num_classes - 1).to(torch.int32).contiguous()
    use_libdevice = not _interpreted()
    skip = all(float(xi) > 0.0 for xi in alphas)
    for m0 in range(0, len(alphas), 2):
        xis = [float(xi) for xi in alphas[m0 : m0 + 2]]
        exps = [(1.0 - xi) / xi if xi >= 0.5 else xi / (1.0 - xi) for xi in xis]
        exps += exps[:1] * (2 - len(exps))
        params = torch.tensor(exps + [COV_EPS, DET_EPS], dtype=torch.float64, device=device)
        _key_regions_kernel[(n * g,)](
            scores, pred_boxes, points, gt, cls, valid, params, weights[m0], r, g, k,
            *scores.stride(), *pred_boxes.stride(), n * r,
            NUM_MAPS=len(xis), HI0=xis[0] >= 0.5, MODE0=_mode(exps[0]),
            HI1=xis[-1] >= 0.5, MODE1=_mode(exps[1]), SKIP=skip,
            MASK_BEFORE=bool(mask_before_topk), USE_LIBDEVICE=use_libdevice, BLOCK=block, KP=kp,
            **COMPILE_OPTIONS,
        )  # fmt: skip
    bg_block = min(1024, max(16, triton.next_power_of_2(r)))
    _background_kernel[(n, math.ceil(r / bg_block))](
        points, gt, valid, background, r, g, BLOCK=bg_block, num_warps=4
    )
    return weights, background
