"""The fused Triton kernel of PGD's key regions equals the PyTorch implementation.

The kernel runs in subprocesses: one with ``TRITON_INTERPRET=1`` set before triton is imported
(Triton's CPU interpreter) runs every case below; one without it checks the error of a forced
"triton" backend on CPU and compiles the kernels for CUDA (sm_90, no GPU needed) to catch
constructs the interpreter accepts but the compiler does not.
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

ROOT = Path(__file__).resolve().parents[2]

# Runs the kernel on every case of argv[1] (torch.save'd list) and saves the outputs to argv[2].
INTERPRETED_RUNNER = """
import sys
import torch
import kd_det2.ops.key_regions_triton as kt
from kd_det2.ops import key_region_weights
cases = torch.load(sys.argv[1])
results = {}
for name, (args, kw, block) in cases.items():
    w, b = kt.key_region_weights_triton(*args, **kw, block=block)
    points, gt, valid = args[2].float(), args[3].float(), args[5].to(torch.int32)
    n, r = args[0].shape[:2]
    bg = torch.full((n, r), float("nan"))  # every element must be written
    if n and r and gt.shape[1]:
        kt._background_kernel[(n, (r + 15) // 16)](points, gt, valid, bg, r, gt.shape[1], BLOCK=16)
    results[name] = (w, b, bg)
calls = []
launcher = kt.key_region_weights_triton
kt.key_region_weights_triton = lambda *a, **k: calls.append(1) or launcher(*a, **k)
args, kw, _ = cases["random_0"]
results["dispatch_forced"] = key_region_weights(*args, **kw, backend="triton")
results["dispatch_calls"] = len(calls)
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
                cls_ptr="*i32", valid_ptr="*i32", params_ptr="*fp64", out_ptr="*fp32")
for mask_before, maps, mode in ((True, 2, 2), (False, 1, 1), (False, 2, 0)):
    const = dict(NUM_MAPS=maps, HI0=True, MODE0=mode, HI1=False, MODE1=2, SKIP=mode != 0,
                 MASK_BEFORE=mask_before, USE_LIBDEVICE=True, BLOCK=1024, KP=64)
    fn = kt._key_regions_kernel
    sig = {a: pointers.get(a, "constexpr" if a in const else "i32") for a in fn.arg_names}
    ptx = compile(ASTSource(fn, sig, const), target=target, options=kt.COMPILE_OPTIONS).asm["ptx"]
    print("PTX", mask_before, maps, mode, "fma.rn.f32" in ptx, "div.full" in ptx, "atom" in ptx)
fn = kt._background_kernel
sig = dict(points_ptr="*fp32", gt_ptr="*fp32", valid_ptr="*i32", out_ptr="*fp32", R="i32",
           G="i32", BLOCK="constexpr")
compile(ASTSource(fn, sig, dict(BLOCK=1024)), target=target)
print("BACKGROUND COMPILED")
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
    """name -> (args, kwargs, block) for the kernel; deterministic."""
    g = torch.Generator().manual_seed(0)
    cases = {}
    for t in range(30):
        n, num_gt, k = (int(x) for x in torch.randint(1, 4, (3,), generator=g))
        h, w = (int(x) for x in torch.randint(1, 9, (2,), generator=g))
        dtype = {1: torch.float16, 4: torch.bfloat16}.get(t % 6)
        args = _case(g, n, [(h, w), ((h + 1) // 2, (w + 1) // 2)], num_gt * (t % 5 != 2), k,
                     quantise=t % 2 == 0, dtype=dtype, far=t % 4 == 3)  # fmt: skip
        kw = dict(topk=[1, 9, 30, 64][t % 4], mask_before_topk=t % 3 == 0)
        cases[f"random_{t}"] = (args, kw, [16, 32, 0][t % 3])
    for mb in (False, True):
        # every kind of xi: 0 (no skip), 0.5 (no power), 1 (ones), 1/3; one launch per pair
        # of maps, the last one with a single map when their number is odd
        alphas = (0.8, 0.6, 0.5, 0.3, 1.0, 0.0, 1 / 3)[: 7 - mb]
        cases[f"all_xi_{mb}"] = (_case(g, 2, [(6, 7), (3, 4)], 4), dict(topk=9, alphas=alphas,
                                 mask_before_topk=mb), 16)  # fmt: skip
        far = _case(g, 2, [(8, 8), (4, 4)], 4, quantise=True, far=True)
        cases[f"far_predictions_{mb}"] = (far, dict(topk=9, mask_before_topk=mb), 16)
        tiny = _case(g, 2, [(8, 8), (4, 4)], 5, small=True)  # boxes smaller than a stride
        tiny[3][0, 0] = torch.tensor([8.0, 8.0, 12.0, 12.0])  # edges on a centre: not inside
        tiny[3][0, 1] = torch.tensor([-10.0, -10.0, 5.0, 6.0])  # over the top-left border
        tiny[3][1, 0] = torch.tensor([60.0, 50.0, 90.0, 70.0])  # over the bottom-right border
        tiny[5][:, :2] = True
        cases[f"small_border_k64_{mb}"] = (tiny, dict(topk=64, mask_before_topk=mb), 32)
        cases[f"small_border_k9_{mb}"] = (tiny, dict(topk=9, mask_before_topk=mb), 16)
        ties = _case(g, 1, [(10, 10), (5, 5)], 3)  # equal keys everywhere: lowest indices win
        ties[0].fill_(0.5)
        ties[1][:] = torch.tensor([0.0, 0.0, 80.0, 80.0])
        ties[3][0, 0] = torch.tensor([0.0, 0.0, 40.0, 40.0])
        ties[5][:] = True
        cases[f"ties_{mb}"] = (ties, dict(topk=30, mask_before_topk=mb), 16)
        zero = [x.clone() for x in ties]
        zero[0].zero_()  # all keys 0
        zero[0][0, 77, :] = float("nan")  # nan_to_num -> 0
        cases[f"zero_scores_{mb}"] = (zero, dict(topk=9, mask_before_topk=mb), 16)
    cases["fewer_locations_than_k"] = (_case(g, 2, [(1, 3), (1, 2)], 2), dict(topk=30), 0)
    no_valid = _case(g, 2, [(4, 4), (2, 2)], 3)
    no_valid[5][:] = False
    cases["padding_only"] = (no_valid, dict(topk=9), 0)
    cases["no_gt"] = (_case(g, 2, [(4, 4), (2, 2)], 0), dict(topk=9), 0)
    cases["three_blocks_of_1024"] = (_case(g, 1, [(30, 56), (15, 28)], 3), dict(topk=30), 0)
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("key_regions_triton")
    torch.save(CASES, tmp / "cases.pt")
    _run(INTERPRETED_RUNNER, str(tmp / "cases.pt"), str(tmp / "out.pt"), interpret=True)
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_torch_path(kernel_results, name):
    args, kw, _ = CASES[name]
    w, b, bg = kernel_results[name]
    want_w, want_b = key_region_weights(*args, **kw, backend="torch")
    assert w.dtype == torch.float32 and w.shape == want_w.shape and b.shape == want_b.shape
    assert torch.equal(w, want_w), (w - want_w).abs().max()  # bit-exact, zeros included
    assert torch.equal(b, want_b)
    if args[3].shape[1]:
        assert torch.equal(bg, want_b)  # the background kernel writes every element
    if name.startswith(("random_1", "small", "ties", "all_xi")):
        ref_w, ref_b = reference_key_region_weights(*args, **kw)
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
        assert torch.equal(b, ref_b)


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


def test_dispatcher_under_the_interpreter(kernel_results):
    assert kernel_results["dispatch_calls"] == 1  # backend="triton" ran the kernel on CPU
    args, kw, _ = CASES["random_0"]
    want = key_region_weights(*args, **kw, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(kernel_results["dispatch_forced"], want))
    # "auto" on a kernel-capable device: verified on first use, then used
    assert kernel_results["auto_state"] is True and kernel_results["auto_calls"] == 2
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


def test_forced_triton_without_interpreter_errors_and_kernels_compile_for_cuda():
    out = _run(COMPILED_RUNNER, interpret=False)
    lines = out.splitlines()
    for how in ("argument", "env"):
        err = [x for x in lines if x.startswith(f"ERROR {how}")]
        assert err and "TRITON_INTERPRET=1" in err[0] and "CUDA" in err[0], out
    ptx = [x.split() for x in lines if x.startswith("PTX")]
    assert len(ptx) == 3 and "BACKGROUND COMPILED" in lines
    for _, _, _, _, fma, div_full, atom in ptx:  # no FMA contraction, IEEE division, atomics
        assert (fma, div_full, atom) == ("False", "False", "True"), out


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

    def fake(scores, *args):
        seen.append(args[-1])
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
    )
    gt = Instances(
        (16, 16), gt_boxes=Boxes(torch.tensor([[0.0, 0, 9, 9]])), gt_classes=torch.tensor([1])
    )
    d.key_region_maps(teacher, [gt])
    assert seen == ["torch"]
