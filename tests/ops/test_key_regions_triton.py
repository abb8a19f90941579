"""The Triton kernels of PGD's key regions equal the PyTorch implementation.

The kernels run in subprocesses: one with ``TRITON_INTERPRET=1`` set before triton is imported
(Triton's CPU interpreter) runs every case below; one without it checks the error of a forced
"triton" backend on CPU and compiles the kernels for CUDA (sm_90, no GPU needed) to catch
constructs the interpreter accepts but the compiler does not. The compiled kernels run against
the PyTorch path in ``test_key_regions_cuda.py`` (CUDA only).
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import kd_det2.ops.key_regions as key_regions
from kd_det2.modeling.distillers import PGD
from kd_det2.ops import (
    BACKEND_ENV,
    key_region_weights,
    reference_key_region_weights,
    resolve_backend,
)
from kd_det2.ops.key_regions import _pairwise_iou, outputs_agree, points_inside_boxes

ROOT = Path(__file__).resolve().parents[2]

# Runs the kernels on every case of argv[1] (torch.save'd dict) and saves the outputs to argv[2].
# torch.empty is poisoned (NaN, -1) so that a read of an element no kernel wrote shows.
INTERPRETED_RUNNER = """
import sys
import torch
import kd_det2.ops.key_regions_triton as kt
from kd_det2.ops import key_region_weights
cases, list_cases = torch.load(sys.argv[1])
empty = torch.empty
def poisoned(*args, **kwargs):
    t = empty(*args, **kwargs)
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)
torch.empty = poisoned
results = {}
for name, (args, kw, opts) in cases.items():
    results[name] = kt.key_region_weights_triton(*args, **kw, **opts)
for name in list_cases:  # the candidate lists themselves
    args, kw, opts = cases[name]
    k = min(kw.get("topk", 30), args[0].shape[1])
    _, counts, lists, _ = kt._candidates(args[1], args[2].float(), args[3].float(), args[5], k,
                                         True, kw.get("mask_before_topk", False), 16, 0)
    results["lists_" + name] = (counts, lists)
torch.empty = empty
# the two merge networks (Triton's tl.topk/tl.sort when compiled, tl.gather here) on one block
g = torch.Generator().manual_seed(0)
merges = []
for log_b, log_k in ((6, 4), (4, 4), (5, 1)):
    keys = torch.randint(-2**62, 2**62, (2**log_b,), generator=g)
    keys[:3] = keys[3]  # repeated values
    keys[4:7] = -2**63  # free slots (EMPTY)
    buf = torch.randint(-2**62, 2**62, (2**log_k,), generator=g).sort(descending=True).values
    buf[-1] = -2**63
    outs = [torch.empty(2**log_k, dtype=torch.int64) for _ in range(2)]
    for out, compiled in zip(outs, (False, True)):
        kt._merge_kernel[(1,)](buf, keys, out, LOG_B=log_b, LOG_K=log_k, COMPILED=compiled)
    merges.append((buf, keys, *outs))
results["merges"] = merges
calls = []
launcher = kt.key_region_weights_triton
kt.key_region_weights_triton = lambda *a, **k: calls.append(1) or launcher(*a, **k)
args, kw, _ = cases["random_0"]
results["dispatch_forced"] = key_region_weights(*args, **kw, backend="triton")
results["dispatch_calls"] = len(calls)
# the float64 parameters are cached per device and exponents: a new call reuses them
params = dict(kt._PARAMS)
key_region_weights(*args, **kw, backend="triton")
results["params_reused"] = len(params) > 0 and all(kt._PARAMS[k] is v for k, v in params.items())
results["params_same_count"] = len(kt._PARAMS) == len(params)
# "auto" picking the kernel (as on CUDA): its first call is checked against PyTorch and kept.
import kd_det2.ops.key_regions as kr
kr.resolve_backend = lambda b, d, k=30: "triton" if b == "auto" else b
results["auto"] = kr.key_region_weights(*args, **kw, backend="auto")
results["auto_state"] = kr._AUTO_CHECKED.get("cpu")
results["auto_calls"] = len(calls)
torch.save(results, sys.argv[2])
"""

# Without the interpreter: the error of a forced "triton" on CPU, then an AOT compile for CUDA.
COMPILED_RUNNER = """
import os
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
import kd_det2.ops.key_regions_triton as kt
from kd_det2.ops import key_region_weights
x = torch.rand(1, 4, 2)
args = (x, torch.rand(1, 4, 4), torch.rand(4, 2), torch.rand(1, 1, 4), torch.zeros(1, 1).long(),
        torch.ones(1, 1).bool())
for how in ("argument", "env"):
    try:
        if how == "env":
            os.environ["KD_DET2_KEY_REGIONS_BACKEND"] = "triton"
        key_region_weights(*args, backend="triton" if how == "argument" else "auto")
        print("NO ERROR", how)
    except RuntimeError as e:
        print("ERROR", how, e)
target = GPUTarget("cuda", 90, 32)
pointers = dict(scores_ptr="*fp16", boxes_ptr="*bf16", points_ptr="*fp32", gt_ptr="*fp32",
                cls_ptr="*i64", valid_ptr="*i1", params_ptr="*fp64", counts_ptr="*i32",
                lists_ptr="*i64", tiles_ptr="*fp32", out_ptr="*fp32", bg_ptr="*fp32")
def build(fn, const, options):
    sig = {a: pointers.get(a, "constexpr" if a in const else "i32") for a in fn.arg_names}
    return compile(ASTSource(fn, sig, const), target=target, options=options).asm["ptx"]
for mask_before, maps, mode, lst in ((True, 2, 2, True), (False, 1, 1, True), (False, 2, 0, False)):
    const = dict(NUM_MAPS=maps, HI0=True, MODE0=mode, HI1=False, MODE1=2, SKIP=mode != 0,
                 MASK_BEFORE=mask_before, LIST=lst, COMPILED=True, LOG_B=8, LOG_K=5, EB=64)
    ptx = build(kt._select_kernel, const, kt.COMPILE_OPTIONS)
    print("PTX", "select", "fma.rn.f32" in ptx, "div.full" in ptx, "atom" in ptx)
for emit, mask_before in ((True, False), (False, False)):
    const = dict(EMIT=emit, MASK_BEFORE=mask_before, BLOCK=64)
    ptx = build(kt._candidates_kernel, const, kt.EMIT_OPTIONS)
    print("PTX", "candidates", "fma.rn.f32" in ptx, "div.full" in ptx, "atom" in ptx or not emit)
"""


def _run(code, *argv, interpret):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", BACKEND_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _levels(sizes, strides):
    """Centres (R, 2) of FPN levels of the given (h, w) and strides, concatenated."""
    pts = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s + s / 2)
    return torch.cat(pts)


def _case(g, n, sizes, num_gt, num_classes=3, quantise=False, small=False, dtype=None, far=False):
    points = _levels(sizes, (8, 16))
    r = points.shape[0]
    size = 8.0 * max(w for _, w in sizes)
    scores = torch.rand(n, r, num_classes, generator=g)
    half = torch.rand(n, r, 2, generator=g) * 20 + 2
    pred = torch.cat([points - half, points + half], dim=-1)
    if far:  # half the predictions miss everything: IoU 0 at in-box locations
        pred += (torch.rand(n, r, 1, generator=g) < 0.5) * 1000.0
    if quantise:  # many exact ties of the quality
        scores, pred = (scores * 4).round() / 4, (pred / 8).round() * 8
    xy = torch.rand(n, num_gt, 2, generator=g) * size * 0.8 - 4
    wh = torch.rand(n, num_gt, 2, generator=g) * (6 if small else size * 0.6) + 1
    gt = torch.cat([xy, xy + wh], dim=-1)
    classes = torch.randint(0, num_classes, (n, num_gt), generator=g)
    valid = torch.rand(n, num_gt, generator=g) > 0.25
    if dtype is not None:
        scores, pred = scores.to(dtype), pred.to(dtype)
    return [scores, pred, points, gt, classes, valid]


def _cases():
    """name -> (args, kwargs, launcher options) for the kernel; deterministic."""
    g = torch.Generator().manual_seed(0)
    cases = {}
    for t in range(30):
        n, num_gt, k = (int(x) for x in torch.randint(1, 4, (3,), generator=g))
        h, w = (int(x) for x in torch.randint(1, 9, (2,), generator=g))
        dtype = {1: torch.float16, 4: torch.bfloat16}.get(t % 6)
        args = _case(g, n, [(h, w), ((h + 1) // 2, (w + 1) // 2)], num_gt * (t % 5 != 2), k,
                     quantise=t % 2 == 0, dtype=dtype, far=t % 4 == 3)  # fmt: skip
        kw = dict(topk=[1, 9, 30, 64][t % 4], mask_before_topk=t % 3 == 0)
        # several merge steps, several candidate programs, lists that overflow (t % 5 == 1)
        opts = dict(block=[16, 32, 0][t % 3], emit_block=[16, 0][t % 2], capacity=2 * (t % 5 == 1))
        cases[f"random_{t}"] = (args, kw, opts)
    for mb in (False, True):
        # every kind of xi: 0 (dense), 0.5 (no power), 1 (ones), 1/3; one launch per pair
        # of maps, the last one with a single map when their number is odd
        alphas = (0.8, 0.6, 0.5, 0.3, 1.0, 0.0, 1 / 3)[: 7 - mb]
        cases[f"all_xi_{mb}"] = (_case(g, 2, [(6, 7), (3, 4)], 4), dict(topk=9, alphas=alphas,
                                 mask_before_topk=mb), dict(block=32))  # fmt: skip
        far = _case(g, 2, [(8, 8), (4, 4)], 4, quantise=True, far=True)
        cases[f"far_predictions_{mb}"] = (far, dict(topk=9, mask_before_topk=mb), dict(block=16))
        tiny = _case(g, 2, [(8, 8), (4, 4)], 5, small=True)  # boxes smaller than a stride
        tiny[3][0, 0] = torch.tensor([8.0, 8.0, 12.0, 12.0])  # edges on a centre: not inside
        tiny[3][0, 1] = torch.tensor([-10.0, -10.0, 5.0, 6.0])  # over the top-left border
        tiny[3][1, 0] = torch.tensor([60.0, 50.0, 90.0, 70.0])  # over the bottom-right border
        tiny[5][:, :2] = True
        cases[f"small_border_k64_{mb}"] = (tiny, dict(topk=64, mask_before_topk=mb), {})
        cases[f"small_border_k9_{mb}"] = (tiny, dict(topk=9, mask_before_topk=mb), dict(block=16))
        ties = _case(g, 1, [(10, 10), (5, 5)], 3)  # equal keys everywhere: lowest indices win
        ties[0].fill_(0.5)
        ties[1][:] = torch.tensor([0.0, 0.0, 80.0, 80.0])
        ties[3][0, 0] = torch.tensor([0.0, 0.0, 40.0, 40.0])
        ties[5][:] = True
        cases[f"ties_{mb}"] = (ties, dict(topk=30, mask_before_topk=mb), dict(block=32))
        zero = [x.clone() for x in ties]
        zero[0].zero_()  # all keys 0
        zero[0][0, 77, :] = float("nan")  # nan_to_num -> 0
        cases[f"zero_scores_{mb}"] = (zero, dict(topk=9, mask_before_topk=mb), dict(block=16))
        # candidates lists overflow: a scan of the blocks near each GT, 16 locations per block
        big = _case(g, 1, [(12, 20), (6, 10)], 3)
        big[3][0, 0] = torch.tensor([100.0, 60.0, 120.0, 70.0])  # small: most blocks skipped
        big[5][:] = True
        cases[f"overflow_{mb}"] = (big, dict(topk=30, mask_before_topk=mb),
                                   dict(block=32, emit_block=16, capacity=4))  # fmt: skip
    cases["fewer_locations_than_k"] = (_case(g, 2, [(1, 3), (1, 2)], 2), dict(topk=30), {})
    no_valid = _case(g, 2, [(4, 4), (2, 2)], 3)
    no_valid[5][:] = False
    cases["padding_only"] = (no_valid, dict(topk=9), {})
    cases["no_gt"] = (_case(g, 2, [(4, 4), (2, 2)], 0), dict(topk=9), {})
    cases["three_blocks_of_1024"] = (_case(g, 1, [(30, 56), (15, 28)], 3), dict(topk=30), {})
    # centres off the half-pixel grid (anchor centres with rounding): float64 moments
    off = _case(g, 2, [(6, 6), (3, 3)], 4)
    off[2] = off[2] + torch.rand(off[2].shape, generator=g) * 0.3
    cases["off_grid"] = (off, dict(topk=9), dict(block=16))
    return cases


LIST_CASES = ["random_3", "random_6", "small_border_k9_True", "far_predictions_False"]
CASES = _cases()


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("key_regions_triton")
    torch.save((CASES, LIST_CASES), tmp / "cases.pt")
    _run(INTERPRETED_RUNNER, str(tmp / "cases.pt"), str(tmp / "out.pt"), interpret=True)
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_torch_path(kernel_results, name):
    args, kw, _ = CASES[name]
    w, b = kernel_results[name]
    want_w, want_b = key_region_weights(*args, **kw, backend="torch")
    assert w.dtype == torch.float32 and w.shape == want_w.shape and b.shape == want_b.shape
    assert torch.equal(b, want_b)  # every background element written (no NaN)
    if name == "off_grid":  # float64 moments summed in another order: "auto"'s tolerance
        assert outputs_agree((w, b), (want_w, want_b))[0]
    else:
        assert torch.equal(w, want_w), (w - want_w).abs().max()  # bit-exact, zeros included
    if name.startswith(("random_1", "small", "ties", "all_xi", "overflow", "off_grid")):
        ref_w, ref_b = reference_key_region_weights(*args, **kw)
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
        assert torch.equal(b, ref_b)


@pytest.mark.parametrize("name", LIST_CASES)
def test_candidate_lists(kernel_results, name):
    """Each valid GT's list holds exactly the locations whose box overlaps it (mask before the
    top-k: whose centre is inside it) and the first k, with their float32 IoU and in-box flag."""
    (scores, pred, points, gt, _, valid), kw, _ = CASES[name]
    counts, lists = kernel_results["lists_" + name]
    n, r = scores.shape[:2]
    k = min(kw["topk"], r)
    pred, gt = pred.float(), gt.float()
    iou = _pairwise_iou(pred, gt)  # (N, G, R)
    p, q = pred[:, None], gt[:, :, None]  # (N, 1, R, 4), (N, G, 1, 4)
    iw = (torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])).clamp(min=0)
    overlap = iw * ih > 0
    inside = points_inside_boxes(points.float(), gt)
    chosen = inside if kw["mask_before_topk"] else overlap
    chosen = chosen | (torch.arange(r) < k)
    for i in range(n):
        for j in range(gt.shape[1]):
            if not valid[i, j]:
                assert counts[i, j] == 0
                continue
            entries = lists[i, j, : int(counts[i, j])]
            loc = entries & (2**30 - 1)
            assert sorted(loc.tolist()) == chosen[i, j].nonzero()[:, 0].tolist()
            assert torch.equal((entries >> 32).to(torch.int32).view(torch.float32), iou[i, j, loc])
            assert torch.equal((entries >> 30) & 1 == 1, inside[i, j, loc])


def test_merge_networks(kernel_results):
    """Both merges of a block into the sorted running top-k give the top-k of the union, sorted:
    the interpreter's tl.gather network and Triton's tl.topk/tl.sort that the GPU runs."""
    for buf, keys, gathered, native in kernel_results["merges"]:
        want = torch.cat([buf, keys]).sort(descending=True).values[: len(buf)]
        assert torch.equal(gathered, want) and torch.equal(native, want)


def test_cases_cover_the_edge_cases(kernel_results):
    args, kw, _ = CASES["ties_False"]
    w = kernel_results["ties_False"][0]
    chosen = set((w[0, 0] > 0).nonzero()[:, 0].tolist())  # ties: the 30 lowest indices win
    assert {10 * row + col for row in range(3) for col in range(5)} <= chosen
    assert max(chosen) < 30
    args, kw, _ = CASES["small_border_k64_True"]
    assert int((kernel_results["small_border_k64_True"][0][0] > 0).sum()) < 64
    assert any(args[3].shape[1] == 0 for args, _, _ in CASES.values())
    assert {CASES[k][0][0].dtype for k in CASES} >= {torch.float16, torch.bfloat16, torch.float32}
    # the overflow cases overflow (scan path): every list holds at least the first k entries
    for mb in (False, True):
        args, kw, opts = CASES[f"overflow_{mb}"]
        assert kw["topk"] > opts["capacity"] and args[5].any()
        assert (kernel_results[f"overflow_{mb}"][0] > 0).any()
    counts = kernel_results["lists_far_predictions_False"][0]
    assert 0 < int(counts.max()) < CASES["far_predictions_False"][0][0].shape[1]  # sparse


def test_dispatcher_under_the_interpreter(kernel_results):
    assert kernel_results["dispatch_calls"] == 1  # backend="triton" ran the kernel on CPU
    args, kw, _ = CASES["random_0"]
    want = key_region_weights(*args, **kw, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(kernel_results["dispatch_forced"], want))
    assert kernel_results["params_reused"] and kernel_results["params_same_count"]
    # "auto" on a kernel-capable device: verified on first use, then used
    assert kernel_results["auto_state"] is True and kernel_results["auto_calls"] == 3
    assert all(torch.equal(a, b) for a, b in zip(kernel_results["auto"], want))


def _fakes(fast, ref):
    calls = []

    def run(name, value):
        def f():
            calls.append(name)
            if isinstance(value, Exception):
                raise value
            return value

        return f

    return calls, run("triton", fast), run("torch", ref)


def test_checked_triton_keeps_the_kernel_only_when_it_matches(monkeypatch, caplog):
    monkeypatch.setattr(key_regions, "_AUTO_CHECKED", {})
    ok = (torch.ones(2, 1, 3), torch.zeros(1, 3))
    calls, fast, ref = _fakes(ok, tuple(x.clone() for x in ok))
    assert key_regions.checked_triton("cuda:0", fast, ref) is ok
    assert key_regions.checked_triton("cuda:0", fast, ref) is ok
    assert calls == ["triton", "torch", "triton"]  # checked once, then the kernel alone

    bad = (torch.ones(2, 1, 3) * 0.5, torch.zeros(1, 3))
    calls, fast, ref = _fakes(bad, ok)
    with caplog.at_level("WARNING"):
        assert key_regions.checked_triton("cuda:1", fast, ref) is ok
    assert "differs from PyTorch" in caplog.text and "0.5" in caplog.text
    assert key_regions.checked_triton("cuda:1", fast, ref) is ok
    assert calls == ["triton", "torch", "torch"]  # dropped for that device

    calls, fast, ref = _fakes(RuntimeError("no sm_90 toolchain"), ok)
    with caplog.at_level("WARNING"):
        assert key_regions.checked_triton("cuda:2", fast, ref) is ok
    assert "failed" in caplog.text and "no sm_90 toolchain" in caplog.text
    assert calls == ["triton", "torch"]

    close = (torch.ones(2, 1, 3) - 6e-8, torch.zeros(1, 3))  # one float32 ulp below 1
    calls, fast, ref = _fakes(close, ok)
    assert key_regions.checked_triton("cuda:3", fast, ref) is close  # within AUTO_ATOL
    assert calls == ["triton", "torch"]


def test_outputs_agree():
    w = torch.tensor([[[0.0, 0.5, 1.0]]])
    b = torch.tensor([[1.0, 0.0, 0.0]])
    assert outputs_agree((w, b), (w.clone(), b.clone())) == (True, 0.0)
    assert outputs_agree((w + (w > 0) * 5e-7, b), (w, b))[0]
    assert not outputs_agree((w + (w > 0) * 5e-6, b), (w, b))[0]  # above AUTO_ATOL
    other = w.clone()
    other[0, 0, 0] = 0.3  # another candidate selected
    assert outputs_agree((other, b), (w, b)) == (False, pytest.approx(0.3))
    assert not outputs_agree((w, 1 - b), (w, b))[0]
    assert not outputs_agree((w[:, :, :2], b), (w, b))[0]


def test_auto_decision_is_the_same_on_every_rank(monkeypatch):
    """Under torch.distributed the verdicts are all-reduced (MIN): a rank whose own check passed
    drops the kernel when another rank's failed; the collective runs once, on first use."""
    import torch.distributed as dist

    other_rank = {"ok": 0}
    seen = []

    def all_reduce(flag, op):
        seen.append((op, flag.device.type))
        flag.copy_(torch.minimum(flag, torch.tensor([other_rank["ok"]], dtype=flag.dtype)))

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(key_regions, "_AUTO_CHECKED", {})
    ok = (torch.ones(1, 1, 2), torch.zeros(1, 2))
    calls, fast, ref = _fakes(tuple(x.clone() for x in ok), ok)
    assert key_regions.checked_triton("cuda:0", fast, ref) is ok  # this rank matched
    assert key_regions.checked_triton("cuda:0", fast, ref) is ok
    assert calls == ["triton", "torch", "torch"] and key_regions._AUTO_CHECKED["cuda:0"] is False
    assert seen == [(dist.ReduceOp.MIN, "cpu")]  # gloo: a CPU flag, once
    other_rank["ok"] = 1
    calls, fast, ref = _fakes(ok, tuple(x.clone() for x in ok))
    assert key_regions.checked_triton("cuda:1", fast, ref) is ok and len(seen) == 2
    assert key_regions._AUTO_CHECKED["cuda:1"] is True


def test_forced_triton_without_interpreter_errors_and_kernels_compile_for_cuda():
    out = _run(COMPILED_RUNNER, interpret=False)
    lines = out.splitlines()
    for how in ("argument", "env"):
        err = [x for x in lines if x.startswith(f"ERROR {how}")]
        assert err and "TRITON_INTERPRET=1" in err[0] and "CUDA" in err[0], out
    ptx = [x.split() for x in lines if x.startswith("PTX")]
    assert [x[1] for x in ptx] == ["select"] * 3 + ["candidates"] * 2, out
    for _, _, fma, div_full, atom in ptx:  # no float32 FMA contraction, IEEE division, atomics
        assert (fma, div_full, atom) == ("False", "False", "True"), out


def test_limits_and_specialisation():
    import kd_det2.ops.key_regions_triton as kt

    def args(n=1, r=4, g=1, k=2):
        scores = torch.zeros(1, 1, 1).expand(n, r, k)  # no memory: only shapes are checked
        return (scores, torch.zeros(1, 1, 4).expand(n, r, 4), torch.zeros(1, 2).expand(r, 2),
                torch.zeros(1, 1, 4).expand(n, g, 4), torch.zeros(1, 1).long().expand(n, g),
                torch.ones(1, 1).bool().expand(n, g))  # fmt: skip

    kt._check(*args(r=kt.MAX_LOCATIONS), (0.8, 0.6), 30)  # at the limits: accepted
    kt._check(*args(n=kt.MAX_IMAGES), (0.8, 0.6), 256)
    with pytest.raises(ValueError, match="locations"):
        kt._check(*args(r=kt.MAX_LOCATIONS + 1), (0.8, 0.6), 30)
    with pytest.raises(ValueError, match="images"):
        kt._check(*args(n=kt.MAX_IMAGES + 1), (0.8, 0.6), 30)
    with pytest.raises(ValueError, match="pairs"):
        kt._check(*args(n=2**15, g=2**16), (0.8, 0.6), 30)
    with pytest.raises(ValueError, match="topk <= 256"):
        kt._check(*args(r=300), (0.8,), 257)
    kt._check(*args(r=200), (0.8,), 257)  # k = min(topk, R) = 200
    with pytest.raises(ValueError, match=r"xi in \[0, 1\]"):
        kt._check(*args(), (1.5,), 30)
    with pytest.raises(ValueError, match="points must be"):
        kt._check(*args()[:2], torch.zeros(3, 2), *args()[3:], (0.8,), 30)
    # arguments that change with the image size are not specialised (no recompilation)
    for kernel in (kt._candidates_kernel, kt._select_kernel):
        free = {p.name for p in kernel.params if p.do_not_specialize}
        assert {"R", "G", "k_eff", "cap"} <= free
    assert {"s_sn", "s_bn", "s_om"} <= {p.name for p in kt._select_kernel.params if
                                        p.do_not_specialize}  # fmt: skip


def test_resolve_backend(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("auto", cuda) == "triton"
    assert resolve_backend("auto", cuda, topk=1000) == "torch"  # above the kernel's top-k
    assert resolve_backend("torch", cuda) == "torch" and resolve_backend("triton", cpu) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("triton", cuda) == "triton"  # the env var overrides "auto" only
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert resolve_backend("auto", cpu) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend("auto", cpu)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("gpu", cpu)


def test_pgd_passes_its_backend(monkeypatch):
    from detectron2.modeling.box_regression import Box2BoxTransformLinear
    from detectron2.structures import Boxes, Instances

    from kd_det2.config import get_kd_cfg
    from kd_det2.modeling.distillers import pgd

    assert get_kd_cfg().MODEL.KD.PGD.BACKEND == "auto" and "BACKEND" in pgd._SCALAR_KEYS
    seen = []

    def fake(scores, *args, **kwargs):
        seen.append(args[-1])  # the backend, the last positional argument
        return torch.zeros(2, *scores.shape[:2]), torch.ones(*scores.shape[:2])

    monkeypatch.setattr(pgd, "key_region_weights", fake)
    chan = {"cls": 4, "reg": 4}
    d = PGD(num_classes=3, num_anchors=1, student_channels=chan, teacher_channels=chan,
            box2box_transform=Box2BoxTransformLinear(), level_weights=[1.0],
            backend="torch")  # fmt: skip
    teacher = SimpleNamespace(
        predictions={
            "cls_logits": [torch.zeros(1, 3, 2, 2)],
            "box_deltas": [torch.zeros(1, 4, 2, 2)],
        },
        anchors=[Boxes(torch.tensor([[0.0, 0, 8, 8]]).repeat(4, 1))],
        images=None,  # no image sizes: padding is not excluded
    )
    gt = Instances(
        (16, 16), gt_boxes=Boxes(torch.tensor([[0.0, 0, 9, 9]])), gt_classes=torch.tensor([1])
    )
    d.key_region_maps(teacher, [gt])
    assert seen == ["torch"]
