"""The compiled Triton kernels of PGD's key regions on a GPU, against the PyTorch path.

CUDA only (marked ``cuda``; skipped with the reason elsewhere): the same cases as the
interpreter tests of ``test_key_regions_triton.py``, benchmark-shaped inputs, no host
synchronisation after the first call, CUDA-graph capture, the launch on the tensors' device,
and "auto" keeping the kernel.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from test_key_regions_triton import CASES

import kd_det2.ops.key_regions as key_regions
from kd_det2.ops import key_region_weights
from kd_det2.ops.key_regions import outputs_agree

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
        reason="needs a CUDA GPU and triton: the compiled kernels run against the PyTorch path "
        "there (on CPU, test_key_regions_triton.py runs them in Triton's interpreter)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def _triton(*args, **kw):
    from kd_det2.ops.key_regions_triton import key_region_weights_triton

    return key_region_weights_triton(*args, **kw)


def _to(args, device):
    return [x.to(device) for x in args]


def _benchmark():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools/benchmark_key_regions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_kernel_equals_torch_path(name):
    args, kw, opts = CASES[name]
    args = _to(args, "cuda")
    got = _triton(*args, **kw, **opts)
    want = key_region_weights(*args, **kw, backend="torch")
    assert got[0].device.type == "cuda" and got[0].shape == want[0].shape
    if name == "off_grid":  # float64 moments summed in another order
        assert outputs_agree(got, want)[0]
    else:
        assert torch.equal(got[0], want[0]), (got[0] - want[0]).abs().max()
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("row", [("demo", 8, 4), ("COCO", 2, 10), ("COCO", 8, 100)])
def test_benchmark_shapes(row):
    bench = _benchmark()
    name, b, g = row
    sizes, classes, topk = (
        (bench.DEMO_SIZES, 6, 9) if name == "demo" else (bench.COCO_SIZES, 80, 30)
    )
    inputs = bench.make_inputs(sizes, 1, b, g, classes, torch.device("cuda"))
    for mask_before in (False, True):
        kw = dict(topk=topk, mask_before_topk=mask_before)
        got = _triton(*inputs, **kw)
        want = key_region_weights(*inputs, **kw, backend="torch")
        assert all(torch.equal(x, y) for x, y in zip(got, want))
        assert (got[0] > 0).any()
    # lists so short that every GT overflows: the scan of the blocks near each GT
    got = _triton(*inputs, topk=topk, capacity=1)
    want = key_region_weights(*inputs, topk=topk, backend="torch")
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_no_host_sync_and_cuda_graph():
    args, kw, opts = CASES["random_5"]
    args = _to(args, "cuda")
    eager = _triton(*args, **kw)  # first call: compiles, copies the parameters once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        again = _triton(*args, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(x, y) for x, y in zip(eager, again))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _triton(*args, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _triton(*args, **kw)
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(x, y) for x, y in zip(eager, captured))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launches_on_the_tensors_device():
    args, kw, _ = CASES["random_7"]
    torch.cuda.set_device(0)
    args = _to(args, "cuda:1")
    got = _triton(*args, **kw)
    want = key_region_weights(*args, **kw, backend="torch")
    assert got[0].device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_auto_keeps_the_kernel(monkeypatch):
    monkeypatch.setattr(key_regions, "_AUTO_CHECKED", {})
    monkeypatch.delenv(key_regions.BACKEND_ENV, raising=False)
    args, kw, _ = CASES["random_9"]
    args = _to(args, "cuda")
    got = key_region_weights(*args, **kw, backend="auto")
    want = key_region_weights(*args, **kw, backend="torch")
    assert key_regions._AUTO_CHECKED[str(args[0].device)] is True
    assert all(torch.equal(x, y) for x, y in zip(got, want))
