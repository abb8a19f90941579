"""Triton kernels of PGD's key predictive regions (same semantics as ``key_regions.py``).

Two kernels per call, without any host synchronisation:

1. ``_candidates_kernel``, one program per (block of ``EMIT_BLOCK`` locations, image): reads the
   block's teacher boxes and centres once and stores their bounding box, then loops over the
   image's GTs. A GT outside that bounding box costs a few scalar loads. For the others it adds
   to the background map and, when the maps are sparse, appends the block's candidates of that
   GT to the GT's list (slot from an atomic counter, position from a prefix sum; each entry packs
   ``(IoU bits << 32) | (inside << 30) | location``). A candidate is a location whose box
   overlaps the GT (``mask_before_topk``: whose centre is inside it) or one of the first k
   locations. Every other location has a key of exactly 0 (xi > 0 and IoU 0) and a higher index
   than those k, or lies outside the GT when the mask comes first, so it never enters the top k:
   the top k of the list is the top k of all R. Each background element is written once.
2. ``_select_kernel``, one program per (image, GT), for two maps at once: reads the GT's list in
   blocks of ``BLOCK`` entries, computes each map's quality key (the class score is read only
   for the listed locations), and merges each block into a running top-k of ``KP`` packed int64
   keys at once (:func:`_merge`: a bitonic top-k of the block, then a bitonic merge with the
   sorted buffer). A packed key is ``(ordered key bits << 32) | (MAX_INDEX - location)``: one
   signed comparison ranks by key, then by lowest location (the reference's stable sort), and
   all keys are distinct, so the selection does not depend on the order of the list. A block
   enters the merge only when its best key beats the current k-th one. Then the Gaussian is
   fitted on the k candidates and the weights go into ``out[map, image, location]`` with an
   atomic max (non-negative floats: order-independent, hence deterministic).

The maps are sparse with ``mask_before_topk`` or when every xi of a launch is > 0 (an IoU of 0
then gives a key of exactly 0). Otherwise (xi = 0 ranks every location by its score) the second
kernel scans all R locations of the image for each GT, as the first version of this kernel did.
A GT whose list overflowed its capacity (``CANDIDATE_BYTES``) is served by a scan too, limited
to the blocks whose bounding box can hold a candidate (and the first block).

Exactness: IoU, scores and keys are computed in float32 with the same operation order as the
PyTorch path (no FMA contraction: launched with ``enable_fp_fusion=False``; IEEE division
``div_rn``); the power is taken in float64 and rounded to float32 (CUDA: libdevice ``pow``, the
function PyTorch's CUDA ``pow`` calls). The CPU interpreter has no libdevice, so it uses
``exp2(e * log2(x))`` in float64 (relative error ~1e-15: the float32 key can differ by one ulp
with probability ~1e-7 per value). The Gaussian's moments are exact integers when the fitted
centres lie on the half-pixel grid (see :func:`~kd_det2.ops.key_regions._gaussian_weights`),
so their summation order does not matter; other centres use float64 sums whose order differs
from PyTorch's (a few float64 ulps). Inputs must be finite; probabilities in [0, 1] (NaN scores
become 0, as in the PyTorch path).
"""

import contextlib
import math
from typing import Dict, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from .key_regions import COV_EPS, DET_EPS, GRID_MAX, TRITON_MAX_TOPK

__all__ = [
    "CANDIDATE_BYTES",
    "COMPILE_OPTIONS",
    "MAX_IMAGES",
    "MAX_LOCATIONS",
    "MAX_TOPK",
    "key_region_weights_triton",
    "triton_runs_on",
]

#: largest top-k handled by the kernel (register buffer of next_pow2(k) int64 per map).
MAX_TOPK = TRITON_MAX_TOPK
#: most locations per image: a list entry keeps the location in 30 bits.
MAX_LOCATIONS = 2**30 - 1
#: most images per call (the second dimension of the candidates kernel's grid).
MAX_IMAGES = 65535
#: memory of the candidate lists (8 bytes per entry, the same capacity for every (image, GT)).
#: A GT with more candidates than its list holds is served by a scan of the blocks near it.
CANDIDATE_BYTES = 128 * 2**20
#: locations per program of the candidates kernel.
EMIT_BLOCK = 64
MAX_INDEX = tl.constexpr(2**31 - 1)  # locations are packed as MAX_INDEX - index (31 bits)
LOC_MASK = tl.constexpr(2**30 - 1)  # location bits of a list entry
EMPTY = tl.constexpr(-(2**63))  # below every packed key: a free slot of the running top-k
FULL = tl.constexpr(2**63 - 1)  # above every packed key
FLT_MAX = tl.constexpr(3.4028234663852886e38)
GRID_LIMIT = tl.constexpr(GRID_MAX)
#: compile options: no FMA contraction, so float32 and float64 results match PyTorch's.
COMPILE_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)
EMIT_OPTIONS = dict(num_warps=2, enable_fp_fusion=False)
#: (device, exponents) -> float64 parameters [e0, e1, COV_EPS, DET_EPS] on that device, built
#: on the first call only (one host-to-device copy), so later calls do not synchronise.
_PARAMS: Dict[Tuple[str, Tuple[float, float]], Tensor] = {}


@triton.jit
def _pack(key, idx):
    """float32 key, int32/int64 index -> int64, larger = better key, then lower index."""
    key = tl.where(key == 0.0, 0.0, key)  # -0.0 ranks as +0.0, as in torch.sort
    bits = key.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotonic in the float value
    return (ordered.to(tl.int64) << 32) | (MAX_INDEX - idx.to(tl.int64))


@triton.jit
def _power(x, e, MODE: tl.constexpr, COMPILED: tl.constexpr):
    """``x ** e`` of float32 x in float64, rounded to float32 (``key_regions._pow``); MODE 0:
    e = 0 (ones), 1: e = 1 (x), 2: general. (torch.pow's square root for e = 0.5 is
    unreachable: no float xi near 1/3 or 2/3 gives exactly 0.5.)"""
    if MODE == 0:
        y = tl.full(x.shape, 1.0, tl.float32)
    elif MODE == 1:
        y = x
    else:
        xd = x.to(tl.float64)
        if COMPILED:
            yd = libdevice.pow(xd, e)
        else:
            pos = xd > 0.0
            yd = tl.where(pos, tl.exp2(e * tl.log2(tl.where(pos, xd, 1.0))), 0.0)
        y = yd.to(tl.float32)
    return y


@triton.jit
def _key(p, iou, e, HI: tl.constexpr, MODE: tl.constexpr, COMPILED: tl.constexpr):
    """:func:`quality_key`: ``p^e * iou`` when xi >= 0.5 (HI), else ``iou^e * p``."""
    if HI:
        key = _power(p, e, MODE, COMPILED) * iou
    else:
        key = _power(iou, e, MODE, COMPILED) * p
    return key


@triton.jit
def _topk_sorted(x, LOG_N: tl.constexpr, LOG_K: tl.constexpr, DESC: tl.constexpr):
    """The 2^LOG_K largest values of x (2^LOG_N,), sorted (largest first if DESC).

    Bitonic sort of runs of 2^LOG_K, alternately descending and ascending; then LOG_N - LOG_K
    halvings, each the elementwise max of pairs of opposite runs (a bitonic run holding the
    larger half of the pair) followed by a bitonic merge. A compare-exchange along bit b pairs
    lane i with lane i ^ 2^b (``tl.gather``); the lane with bit b set takes the smaller value in
    a descending run, the larger in an ascending one."""
    lanes = tl.arange(0, 2**LOG_N)
    for s in tl.static_range(1, LOG_K + 1):
        desc = (((lanes >> s) & 1) == 0) == DESC  # runs of 2^s; all DESC when s = LOG_N
        for t in tl.static_range(s):  # bits s - 1, ..., 0
            y = tl.gather(x, lanes ^ (1 << (s - 1 - t)), 0)
            low = (((lanes >> (s - 1 - t)) & 1) == 1) == desc
            x = tl.where(low, tl.minimum(x, y), tl.maximum(x, y))
    for r in tl.static_range(LOG_N - LOG_K):
        x = tl.max(tl.reshape(x, [2 ** (LOG_N - r - 1 - LOG_K), 2, 2**LOG_K]), axis=1)
        x = tl.reshape(x, [2 ** (LOG_N - r - 1)])
        lanes = tl.arange(0, 2 ** (LOG_N - r - 1))
        desc = (((lanes >> LOG_K) & 1) == 0) == DESC
        for t in tl.static_range(LOG_K):
            y = tl.gather(x, lanes ^ (1 << (LOG_K - 1 - t)), 0)
            low = (((lanes >> (LOG_K - 1 - t)) & 1) == 1) == desc
            x = tl.where(low, tl.minimum(x, y), tl.maximum(x, y))
    return x


@triton.jit
def _merge(buf, pk, LOG_B: tl.constexpr, LOG_K: tl.constexpr, COMPILED: tl.constexpr):
    """Top 2^LOG_K (sorted, largest first) of the union of the sorted running top-k ``buf``
    (2^LOG_K,) and the packed keys ``pk`` (2^LOG_B,): the block's top k in ascending order, the
    elementwise max with buf (a bitonic sequence holding the k largest), a bitonic sort.

    Compiled: Triton's ``tl.topk`` and ``tl.sort`` (bitonic networks on reductions over the axes
    of a hypercube); in the interpreter, where their nested functions are slow, the same network
    with ``tl.gather`` (:func:`_topk_sorted`). Same values (the tests compare the two)."""
    if COMPILED:
        x = tl.maximum(buf, tl.flip(tl.topk(pk, 2**LOG_K), 0))
        x = tl.sort(x, descending=True)
    else:
        x = tl.maximum(buf, _topk_sorted(pk, LOG_B, LOG_K, False))
        lanes = tl.arange(0, 2**LOG_K)
        for t in tl.static_range(LOG_K):
            y = tl.gather(x, lanes ^ (1 << (LOG_K - 1 - t)), 0)
            low = ((lanes >> (LOG_K - 1 - t)) & 1) == 1
            x = tl.where(low, tl.minimum(x, y), tl.maximum(x, y))
    return x


@triton.jit
def _merge_kernel(buf_ptr, keys_ptr, out_ptr, LOG_B: tl.constexpr, LOG_K: tl.constexpr,
                  COMPILED: tl.constexpr):  # fmt: skip
    """out = _merge(buf, keys) for one buffer (2^LOG_K,) and block (2^LOG_B,) of int64 (tests)."""
    lanes = tl.arange(0, 2**LOG_K)
    x = _merge(tl.load(buf_ptr + lanes), tl.load(keys_ptr + tl.arange(0, 2**LOG_B)), LOG_B, LOG_K,
               COMPILED)  # fmt: skip
    tl.store(out_ptr + lanes, x)


@triton.jit
def _kth(buf, lanes, k_eff):
    """The k-th largest value of the sorted buffer (EMPTY while it holds fewer than k)."""
    return tl.min(tl.where(lanes < k_eff, buf, FULL), axis=0)


@triton.jit
def _inside(x, y, gx1, gy1, gx2, gy2):
    """Strict point-in-box test with INSIDE_EPS margins (float32, as points_inside_boxes)."""
    return (x - gx1 > 1e-10) & (y - gy1 > 1e-10) & (gx2 - x > 1e-10) & (gy2 - y > 1e-10)


@triton.jit
def _overlaps(lo_x, lo_y, hi_x, hi_y, gx1, gy1, gx2, gy2):
    """Whether a bounding box (lo, hi) of boxes and centres can hold a candidate of the GT: a box
    overlaps it only if x2 > gx1 and x1 < gx2 (same for y), a centre is inside only if
    gx1 < x < gx2 (same for y)."""
    return (hi_x > gx1) & (lo_x < gx2) & (hi_y > gy1) & (lo_y < gy2)


@triton.jit
def _iou(px1, py1, px2, py2, gx1, gy1, gx2, gy2):
    """IoU of boxes with one GT, float32, the operation order of ``_pairwise_iou``; also returns
    the intersection area."""
    area_p = tl.maximum(px2 - px1, 0.0) * tl.maximum(py2 - py1, 0.0)
    area_g = tl.maximum(gx2 - gx1, 0.0) * tl.maximum(gy2 - gy1, 0.0)
    iw = tl.maximum(tl.minimum(px2, gx2) - tl.maximum(px1, gx1), 0.0)
    ih = tl.maximum(tl.minimum(py2, gy2) - tl.maximum(py1, gy1), 0.0)
    inter = iw * ih
    union = tl.maximum(area_p + area_g - inter, 1e-6)
    return tl.math.div_rn(inter, union), inter


@triton.jit
def _fit_and_write(buf, lanes, k_eff, points_ptr, gx1, gy1, gx2, gy2, out_ptr, cov_eps, det_eps,
                   MASK_BEFORE: tl.constexpr, COMPILED: tl.constexpr):  # fmt: skip
    """Gaussian (float64) on the k candidates in buf; atomic max of the in-box weights.

    Same arithmetic as ``key_regions._gaussian_weights``: integer moments in half-pixel units
    when every fitted centre is on the half-pixel grid, float64 sums otherwise."""
    active = (lanes < k_eff) & (buf != EMPTY)
    idx = tl.where(active, MAX_INDEX - (buf & MAX_INDEX), 0)
    cx = tl.load(points_ptr + 2 * idx, mask=active, other=0.0)
    cy = tl.load(points_ptr + 2 * idx + 1, mask=active, other=0.0)
    inside = _inside(cx, cy, gx1, gy1, gx2, gy2) & active
    if MASK_BEFORE:
        fit = inside
    else:
        fit = active
    # exact moments: u = 2 c is an integer on the half-pixel grid
    ux_f = cx * 2.0
    uy_f = cy * 2.0
    ux = ux_f.to(tl.int64)
    uy = uy_f.to(tl.int64)
    on = (ux.to(tl.float32) == ux_f) & (uy.to(tl.float32) == uy_f)
    on = on & (tl.abs(ux_f) <= GRID_LIMIT) & (tl.abs(uy_f) <= GRID_LIMIT)
    grid = tl.min(tl.where(fit, on, True).to(tl.int32), axis=0) == 1
    ux = tl.where(fit & on, ux, 0)
    uy = tl.where(fit & on, uy, 0)
    mi = tl.maximum(tl.sum(fit.to(tl.int64), axis=0), 1)
    sx = tl.sum(ux, axis=0)
    sy = tl.sum(uy, axis=0)
    cxx = mi * tl.sum(ux * ux, axis=0) - sx * sx  # m^2 * 4 * variance, exact
    cyy = mi * tl.sum(uy * uy, axis=0) - sy * sy
    cxy = mi * tl.sum(ux * uy, axis=0) - sx * sy
    den = (4 * mi * mi).to(tl.float64)
    two_m = (2 * mi).to(tl.float64)
    exx = cxx.to(tl.float64) / den + cov_eps
    eyy = cyy.to(tl.float64) / den + cov_eps
    exy = cxy.to(tl.float64) / den
    edx = (mi * ux - sx).to(tl.float64) / two_m
    edy = (mi * uy - sy).to(tl.float64) / two_m
    # float64 sums (centres off the grid)
    v = fit.to(tl.float64)
    m = tl.maximum(tl.sum(v, axis=0), 1.0)
    cxd = cx.to(tl.float64)
    cyd = cy.to(tl.float64)
    fdx = (cxd - tl.sum(cxd * v, axis=0) / m) * v
    fdy = (cyd - tl.sum(cyd * v, axis=0) / m) * v
    fxx = tl.sum(fdx * fdx, axis=0) / m + cov_eps
    fyy = tl.sum(fdy * fdy, axis=0) / m + cov_eps
    fxy = tl.sum(fdx * fdy, axis=0) / m
    sxx = tl.where(grid, exx, fxx)
    syy = tl.where(grid, eyy, fyy)
    sxy = tl.where(grid, exy, fxy)
    dx = tl.where(grid, edx, fdx)
    dy = tl.where(grid, edy, fdy)
    det = sxx * syy - sxy * sxy
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / (det + det_eps)
    if COMPILED:
        w = libdevice.exp(-0.5 * maha) * v
    else:
        w = tl.exp(-0.5 * maha) * v
    tl.atomic_max(out_ptr + idx, w.to(tl.float32), mask=inside)


@triton.jit(do_not_specialize=["R", "G", "k_eff", "cap", "s_bn"])
def _candidates_kernel(
    boxes_ptr, points_ptr, gt_ptr, valid_ptr, counts_ptr, lists_ptr, bg_ptr, tiles_ptr,
    R, G, k_eff, cap, s_bn, s_br, s_bk,
    EMIT: tl.constexpr, MASK_BEFORE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (block of locations, image): background map of the block and, when EMIT, the
    block's candidates of every GT appended to the GT's list.

    boxes (N, R, 4) any float dtype (strides s_b*); points (R, 2) float32; gt (N, G, 4) float32;
    valid (N, G) bool; counts (N, G) int32, zero-initialised; lists (N, G, cap) int64;
    bg (N, R) float32, every element written; tiles (N, cdiv(R, BLOCK), 4) float32: each
    block's bounding box (x1, y1, x2, y2) of the centres and, when EMIT without MASK_BEFORE, of
    the boxes (a GT outside it has no candidate in the block).
    """
    img = tl.program_id(1).to(tl.int64)
    start = tl.program_id(0) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    in_r = offs < R
    offs64 = offs.to(tl.int64)
    x = tl.load(points_ptr + 2 * offs64, mask=in_r, other=0.0)
    y = tl.load(points_ptr + 2 * offs64 + 1, mask=in_r, other=0.0)
    lo_x = tl.min(tl.where(in_r, x, float("inf")), axis=0)
    lo_y = tl.min(tl.where(in_r, y, float("inf")), axis=0)
    hi_x = tl.max(tl.where(in_r, x, -float("inf")), axis=0)
    hi_y = tl.max(tl.where(in_r, y, -float("inf")), axis=0)
    if EMIT:
        bo = boxes_ptr + img * s_bn + offs64 * s_br
        px1 = tl.load(bo, mask=in_r, other=0.0).to(tl.float32)
        py1 = tl.load(bo + s_bk, mask=in_r, other=0.0).to(tl.float32)
        px2 = tl.load(bo + 2 * s_bk, mask=in_r, other=0.0).to(tl.float32)
        py2 = tl.load(bo + 3 * s_bk, mask=in_r, other=0.0).to(tl.float32)
        if not MASK_BEFORE:
            # a box overlaps the GT only if x2 > gx1 and x1 < gx2 (same for y)
            lo_x = tl.minimum(lo_x, tl.min(tl.where(in_r, px1, float("inf")), axis=0))
            lo_y = tl.minimum(lo_y, tl.min(tl.where(in_r, py1, float("inf")), axis=0))
            hi_x = tl.maximum(hi_x, tl.max(tl.where(in_r, px2, -float("inf")), axis=0))
            hi_y = tl.maximum(hi_y, tl.max(tl.where(in_r, py2, -float("inf")), axis=0))
    tile = tiles_ptr + 4 * (img * tl.num_programs(0) + tl.program_id(0))
    tl.store(tile, lo_x)
    tl.store(tile + 1, lo_y)
    tl.store(tile + 2, hi_x)
    tl.store(tile + 3, hi_y)
    head = start < k_eff
    covered = tl.zeros([BLOCK], dtype=tl.int1)
    for j in range(0, G):
        pair = img * G + j
        gt = gt_ptr + 4 * pair
        gx1 = tl.load(gt)
        gy1 = tl.load(gt + 1)
        gx2 = tl.load(gt + 2)
        gy2 = tl.load(gt + 3)
        ok = tl.load(valid_ptr + pair) != 0
        near = ok & _overlaps(lo_x, lo_y, hi_x, hi_y, gx1, gy1, gx2, gy2)
        visit = near
        if EMIT:
            visit = visit | (ok & head)
        if visit:
            inside = _inside(x, y, gx1, gy1, gx2, gy2) & in_r
            covered = covered | inside
            if EMIT:
                iou, inter = _iou(px1, py1, px2, py2, gx1, gy1, gx2, gy2)
                if MASK_BEFORE:
                    sel = inside
                else:
                    sel = inter > 0.0
                sel = (sel | (offs < k_eff)) & in_r
                num = tl.sum(sel.to(tl.int32), axis=0)
                if num > 0:
                    base = tl.atomic_add(counts_ptr + pair, num)
                    pos = base + tl.cumsum(sel.to(tl.int32), axis=0) - 1
                    entry = iou.to(tl.int32, bitcast=True).to(tl.int64) << 32
                    entry = entry | (inside.to(tl.int64) << 30) | offs64
                    tl.store(lists_ptr + pair * cap + pos, entry, mask=sel & (pos < cap))
    tl.store(bg_ptr + img * R + offs64, tl.where(covered, 0.0, 1.0), mask=in_r)


@triton.jit(do_not_specialize=["R", "G", "k_eff", "cap", "s_sn", "s_bn", "s_om"])
def _select_kernel(
    scores_ptr, boxes_ptr, points_ptr, gt_ptr, cls_ptr, valid_ptr, params_ptr, counts_ptr,
    lists_ptr, tiles_ptr, out_ptr, R, G, K, k_eff, cap, s_sn, s_sr, s_sk, s_bn, s_br, s_bk, s_om,
    NUM_MAPS: tl.constexpr, HI0: tl.constexpr, MODE0: tl.constexpr, HI1: tl.constexpr,
    MODE1: tl.constexpr, SKIP: tl.constexpr, MASK_BEFORE: tl.constexpr, LIST: tl.constexpr,
    COMPILED: tl.constexpr, LOG_B: tl.constexpr, LOG_K: tl.constexpr, EB: tl.constexpr,
):  # fmt: skip
    """One program per (image, GT): top-k of the quality, Gaussian, atomic max into the maps.

    scores (N, R, K) any float dtype (strides s_s*); boxes (N, R, 4) (strides s_b*); points
    (R, 2) float32; gt (N, G, 4) float32; cls (N, G) integer; valid (N, G) bool; params float64
    [e0, e1, COV_EPS, DET_EPS]; counts, lists, tiles: see ``_candidates_kernel`` (read when
    LIST); out (NUM_MAPS, N, R) float32 (map stride s_om), zero-initialised. SKIP: every xi > 0
    (zero IoU implies a zero key). COMPILED: libdevice's pow and exp, Triton's sort (False in
    the interpreter). Reads the GT's list when LIST and it did not overflow, otherwise scans the
    R locations (when LIST, only the blocks whose bounding box in ``tiles``, one per EB
    locations, can hold a candidate, and the first); 2^LOG_B entries per step, a running top
    2^LOG_K >= k.
    """
    BLOCK: tl.constexpr = 2**LOG_B
    KP: tl.constexpr = 2**LOG_K
    pid = tl.program_id(0).to(tl.int64)
    img = pid // G
    ok = tl.load(valid_ptr + pid) != 0
    cls = tl.minimum(tl.maximum(tl.load(cls_ptr + pid).to(tl.int64), 0), K - 1)
    gx1 = tl.load(gt_ptr + 4 * pid)
    gy1 = tl.load(gt_ptr + 4 * pid + 1)
    gx2 = tl.load(gt_ptr + 4 * pid + 2)
    gy2 = tl.load(gt_ptr + 4 * pid + 3)
    e0 = tl.load(params_ptr)
    e1 = tl.load(params_ptr + 1)
    s_base = scores_ptr + img * s_sn + cls * s_sk
    b_base = boxes_ptr + img * s_bn
    if LIST:
        count = tl.load(counts_ptr + pid)
        use_list = count <= cap
        n_items = tl.where(use_list, count, R)
    else:
        use_list = False
        n_items = R
    n_items = tl.where(ok, n_items, 0)  # padded GTs scan nothing
    lanes = tl.arange(0, KP)
    buf0 = tl.full([KP], EMPTY, tl.int64)
    buf1 = buf0
    thr0 = _kth(buf0, lanes, k_eff)
    thr1 = thr0
    for start in range(0, n_items, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        live = offs < n_items
        if use_list:
            e = tl.load(lists_ptr + pid * cap + offs, mask=live, other=0)
            loc = e & LOC_MASK
            inside = ((e >> 30) & 1) != 0
            iou = (e >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        else:
            loc = offs.to(tl.int64)
            if LIST:  # sparse maps: skip the blocks that cannot hold a candidate
                NT: tl.constexpr = (2**LOG_B + EB - 1) // EB
                t = start // EB + tl.arange(0, NT)
                on = t < (R + EB - 1) // EB
                tb = tiles_ptr + 4 * (img * ((R + EB - 1) // EB) + t)
                near = _overlaps(tl.load(tb, mask=on, other=float("inf")),
                                 tl.load(tb + 1, mask=on, other=float("inf")),
                                 tl.load(tb + 2, mask=on, other=-float("inf")),
                                 tl.load(tb + 3, mask=on, other=-float("inf")),
                                 gx1, gy1, gx2, gy2)  # fmt: skip
                live = live & ((tl.max(near.to(tl.int32), axis=0) > 0) | (start < k_eff))
            bo = b_base + loc * s_br
            px1 = tl.load(bo, mask=live, other=0.0).to(tl.float32)
            py1 = tl.load(bo + s_bk, mask=live, other=0.0).to(tl.float32)
            px2 = tl.load(bo + 2 * s_bk, mask=live, other=0.0).to(tl.float32)
            py2 = tl.load(bo + 3 * s_bk, mask=live, other=0.0).to(tl.float32)
            iou, inter = _iou(px1, py1, px2, py2, gx1, gy1, gx2, gy2)
            if MASK_BEFORE:
                lx = tl.load(points_ptr + 2 * loc, mask=live, other=0.0)
                ly = tl.load(points_ptr + 2 * loc + 1, mask=live, other=0.0)
                inside = _inside(lx, ly, gx1, gy1, gx2, gy2)
            else:
                inside = live
        # upper bound of the key: +inf, or exactly 0 where IoU = 0 (xi > 0), -1 outside the box
        ub = tl.full([BLOCK], float("inf"), tl.float32)
        if SKIP:
            ub = tl.where(iou > 0.0, ub, 0.0)
        if MASK_BEFORE:
            ub = tl.where(inside, ub, -1.0)
        best = tl.max(tl.where(live, _pack(ub, loc), EMPTY), axis=0)
        thr = thr0
        if NUM_MAPS == 2:
            thr = tl.minimum(thr0, thr1)
        if best > thr:
            p = tl.load(s_base + loc * s_sr, mask=live, other=0.0).to(tl.float32)
            p = tl.where(p != p, 0.0, tl.minimum(tl.maximum(p, -FLT_MAX), FLT_MAX))  # nan_to_num
            key = _key(p, iou, e0, HI0, MODE0, COMPILED)
            if MASK_BEFORE:
                key = tl.where(inside, key, -1.0)
            pk = tl.where(live, _pack(key, loc), EMPTY)
            if tl.max(pk, axis=0) > thr0:
                buf0 = _merge(buf0, pk, LOG_B, LOG_K, COMPILED)
                thr0 = _kth(buf0, lanes, k_eff)
            if NUM_MAPS == 2:
                key = _key(p, iou, e1, HI1, MODE1, COMPILED)
                if MASK_BEFORE:
                    key = tl.where(inside, key, -1.0)
                pk = tl.where(live, _pack(key, loc), EMPTY)
                if tl.max(pk, axis=0) > thr1:
                    buf1 = _merge(buf1, pk, LOG_B, LOG_K, COMPILED)
                    thr1 = _kth(buf1, lanes, k_eff)
    cov_eps = tl.load(params_ptr + 2)
    det_eps = tl.load(params_ptr + 3)
    out_img = out_ptr + img * R
    _fit_and_write(buf0, lanes, k_eff, points_ptr, gx1, gy1, gx2, gy2, out_img, cov_eps,
                   det_eps, MASK_BEFORE, COMPILED)  # fmt: skip
    if NUM_MAPS == 2:
        _fit_and_write(buf1, lanes, k_eff, points_ptr, gx1, gy1, gx2, gy2, out_img + s_om,
                       cov_eps, det_eps, MASK_BEFORE, COMPILED)  # fmt: skip


def _interpreted() -> bool:
    kernel = type(_select_kernel).__name__ == "InterpretedFunction"
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


def _params(device: torch.device, exps: Tuple[float, float]) -> Tensor:
    """Cached float64 [e0, e1, COV_EPS, DET_EPS] on ``device`` (copied there on first use)."""
    key = (str(device), exps)
    params = _PARAMS.get(key)
    if params is None:
        params = torch.tensor([*exps, COV_EPS, DET_EPS], dtype=torch.float64).to(device)
        _PARAMS[key] = params
    return params


def _check(scores, pred_boxes, points, gt_boxes, gt_classes, gt_valid, alphas, topk):
    """The kernels' limits, with the argument at fault and the fix."""
    name = "key_region_weights (backend 'triton')"
    if topk < 1:
        raise ValueError(f"key_region_weights: topk must be >= 1, got {topk}")
    if any(not 0.0 <= float(xi) <= 1.0 for xi in alphas):
        raise ValueError(f"{name}: needs every xi in [0, 1], got {tuple(alphas)}")
    if scores.dim() != 3 or pred_boxes.shape != (*scores.shape[:2], 4):
        raise ValueError(
            f"{name}: scores must be (N, R, K) and pred_boxes (N, R, 4), got "
            f"{tuple(scores.shape)} and {tuple(pred_boxes.shape)}"
        )
    n, r, _ = scores.shape
    g = gt_boxes.shape[1]
    if points.shape != (r, 2) or gt_boxes.shape != (n, g, 4):
        raise ValueError(
            f"{name}: points must be (R, 2) and gt_boxes (N, G, 4), got {tuple(points.shape)} "
            f"and {tuple(gt_boxes.shape)} for N = {n}, R = {r}"
        )
    if gt_classes.shape != (n, g) or gt_valid.shape != (n, g):
        raise ValueError(f"{name}: gt_classes and gt_valid must be (N, G) = ({n}, {g})")
    if r > MAX_LOCATIONS:
        raise ValueError(f"{name}: at most {MAX_LOCATIONS} locations, got {r}; use 'torch'")
    if n > MAX_IMAGES or n * g > 2**31 - 1:
        raise ValueError(
            f"{name}: at most {MAX_IMAGES} images and 2^31 - 1 (image, GT) pairs, got N = {n}, "
            f"G = {g}; split the batch"
        )
    if min(int(topk), r) > MAX_TOPK:
        raise ValueError(f"{name}: supports topk <= {MAX_TOPK}, got {topk}; use 'torch'")


def _candidates(
    pred_boxes, points, gt, valid, k, emit, mask_before, emit_block, capacity
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the candidates kernel: (background (N, R), counts (N, G) int32, lists (N, G, cap)
    int64, tiles (N, cdiv(R, emit_block), 4)); counts and lists are placeholders without EMIT."""
    n, r, g, device = pred_boxes.shape[0], pred_boxes.shape[1], gt.shape[1], pred_boxes.device
    cap = max(1, min(r, capacity or CANDIDATE_BYTES // (8 * max(n * g, 1))))
    if emit:
        counts = torch.zeros(n, g, dtype=torch.int32, device=device)
        lists = torch.empty(n, g, cap, dtype=torch.int64, device=device)
    else:  # not read
        counts = torch.empty(1, dtype=torch.int32, device=device)
        lists = torch.empty(1, dtype=torch.int64, device=device)
    background = torch.empty(n, r, device=device)
    tiles = torch.empty(n, math.ceil(r / emit_block), 4, device=device)
    _candidates_kernel[(math.ceil(r / emit_block), n)](
        pred_boxes, points, gt, valid, counts, lists, background, tiles, r, g, k, cap,
        pred_boxes.stride(0), pred_boxes.stride(1), pred_boxes.stride(2),
        EMIT=emit, MASK_BEFORE=mask_before, BLOCK=emit_block, **EMIT_OPTIONS,
    )  # fmt: skip
    return background, counts, lists, tiles


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
    emit_block: int = 0,
    capacity: int = 0,
) -> Tuple[Tensor, Tensor]:
    """Triton version of :func:`~kd_det2.ops.key_regions.key_region_weights` (same arguments,
    shapes and returns: weights (len(alphas), N, R) float32, background (N, R) float32).

    One candidates launch, then one selection launch per pair of ``alphas``, on the tensors'
    device; no host synchronisation (the first call per device and exponents copies the float64
    parameters there once). ``block``: list entries or locations per merge step (a power of two,
    raised to next_pow2(topk); 0 = 256); ``emit_block``: locations per program of the candidates
    kernel (a power of two; 0 = ``EMIT_BLOCK``); ``capacity``: entries per (image, GT) list
    (0 = from ``CANDIDATE_BYTES``); a GT with more candidates falls back to a scan of the blocks
    near it.
    """
    device = scores.device
    if not triton_runs_on(device):
        raise RuntimeError(
            f"key_region_weights: backend 'triton' needs CUDA tensors (got {device}); on CPU set "
            "TRITON_INTERPRET=1 before triton is imported (Triton's interpreter, slow), or use "
            "backend 'torch'."
        )
    _check(scores, pred_boxes, points, gt_boxes, gt_classes, gt_valid, alphas, topk)
    n, r, num_classes = scores.shape
    g = gt_boxes.shape[1]
    weights = torch.zeros(len(alphas), n, r, device=device)
    if n == 0 or r == 0:
        return weights, torch.ones(n, r, device=device)
    k = min(int(topk), r)
    kp = max(2, triton.next_power_of_2(k))
    block = max(kp, block or 256)
    emit_block = emit_block or EMIT_BLOCK
    if block & (block - 1) or emit_block & (emit_block - 1):
        raise ValueError("key_region_weights_triton: block sizes must be powers of two")
    pred_boxes = pred_boxes.to(device)
    points = points.to(device, torch.float32).contiguous()
    gt = gt_boxes.to(device, torch.float32).contiguous()
    valid = gt_valid.to(device).contiguous()
    cls = gt_classes.to(device).contiguous()
    compiled = not _interpreted()
    xis = [float(xi) for xi in alphas]
    groups = [xis[m0 : m0 + 2] for m0 in range(0, len(xis), 2)]
    # sparse: every location outside the lists has a key of 0 (or lies outside the box)
    sparse = [bool(mask_before_topk) or all(xi > 0.0 for xi in grp) for grp in groups]
    emit = any(sparse) and g > 0
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        background, counts, lists, tiles = _candidates(
            pred_boxes, points, gt, valid, k, emit, bool(mask_before_topk), emit_block, capacity
        )
        for m0, grp, list_mode in zip(range(0, len(xis), 2), groups, sparse):
            if g == 0:
                break
            exps = [(1.0 - xi) / xi if xi >= 0.5 else xi / (1.0 - xi) for xi in grp]
            exps += exps[:1] * (2 - len(exps))
            _select_kernel[(n * g,)](
                scores, pred_boxes, points, gt, cls, valid, _params(device, tuple(exps)),
                counts, lists, tiles, weights[m0], r, g, num_classes, k, lists.shape[-1],
                *scores.stride(), *pred_boxes.stride(), n * r,
                NUM_MAPS=len(grp), HI0=grp[0] >= 0.5, MODE0=_mode(exps[0]),
                HI1=grp[-1] >= 0.5, MODE1=_mode(exps[1]), SKIP=all(xi > 0.0 for xi in grp),
                MASK_BEFORE=bool(mask_before_topk), LIST=list_mode and emit,
                COMPILED=compiled, LOG_B=block.bit_length() - 1,
                LOG_K=kp.bit_length() - 1, EB=emit_block, **COMPILE_OPTIONS,
            )  # fmt: skip
    return weights, background
