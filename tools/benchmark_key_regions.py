#!/usr/bin/env python
"""Benchmark of PGD's key-region weights: the PyTorch implementation vs the Triton kernels.

    python tools/benchmark_key_regions.py [--iters 50] [--ref-iters 10] [--bandwidth-gbs 4800]
        [--anchors 1 9] [--batches 2 8 16] [--gts 10 50 100] [--block 0] [--emit-block 0]
        [--interpret]

Inputs are synthetic but shaped like a dense detector's (both maps, xi = 0.8 and 0.6):

* demo scale: 128 px images, FCOS P3-P7 (341 locations), 6 classes, top-9, B = 8, G = 4;
* COCO scale: 1344 x 800 padded images, P3-P7 (22,400 locations per anchor; ``--anchors 9``
  gives RetinaNet's 201,600), 80 classes, top-30, B in {2, 8, 16}, G in {10, 50, 100}.

Teacher probabilities are sigmoid(1.5 z - 4), decoded boxes lie around their location with
a size of 1-4 strides, GT sizes are log-uniform in [16, 512] px, and each image has between
G/2 and G valid GTs (the rest is padding).

On CUDA, every timed repetition starts with the L2 cache flushed (a 256 MiB buffer is
overwritten) and the GPU idle; medians of ``--iters`` (kernel) / ``--ref-iters`` (PyTorch):

* ``torch ms`` / ``triton ms``: the whole call, host wall clock from an idle GPU to the end of
  its work (includes the launcher's Python and the launches);
* ``kernel ms``: the kernel path captured once in a CUDA graph and replayed, timed with CUDA
  events: GPU time only (the graph also holds the small fills: zeroed weights and counters);
* ``speed-up``: torch ms / triton ms; ``x floor``, ``x floor+scores``: kernel ms over the floors;
* ``equal``: bit-identical to the PyTorch path; ``agree``: within "auto"'s tolerance
  (``key_regions.outputs_agree``); peak memory: ``torch.cuda.max_memory_allocated`` during one
  call minus the memory held before it.

The floors are the compulsory memory traffic divided by ``--bandwidth-gbs`` (default 4800 GB/s:
H200's HBM3e; pass 3350 for an H100 SXM), counting only the real (valid) GTs:

* floor: each image's decoded boxes read once (N R 4 s_box bytes), the centres once (R 8), the
  outputs written once ((maps + 1) N R 4: weights, background);
* floor+scores: plus the score of the GT's class at every location for every real GT
  (G_real R s_score, counted at s_score bytes although the (N, R, K) layout makes each such read
  fetch a 32-byte sector). The kernels read scores only at the locations whose box overlaps the
  GT, so they can beat this column but not the first.

Without CUDA the PyTorch implementation is timed on the CPU (wall clock, rows with more than
``--cpu-max-pairs`` image x GT x location triples are skipped), the kernel and ratio columns say
that the GPU run is pending, and ``--interpret`` (CPU only) checks the kernel against it on a
tiny size with Triton's interpreter (TRITON_INTERPRET=1, set by this script before triton is
imported).
"""
import argparse
import math
import os
import statistics
import sys
import time

if "--interpret" in sys.argv:  # before anything imports triton (torch may)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kd_det2.ops import key_region_weights  # noqa: E402
from kd_det2.ops.key_regions import outputs_agree  # noqa: E402

COCO_SIZES = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]  # 800 x 1344, strides 8..128
DEMO_SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # 128 x 128
STRIDES = [8, 16, 32, 64, 128]


def make_inputs(sizes, anchors, batch, num_gt, num_classes, device, seed=0):
    """Synthetic (scores, pred_boxes, points, gt_boxes, gt_classes, gt_valid) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    for (h, w), s in zip(sizes, STRIDES):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s + s / 2
        pts.append(torch.stack([c, torch.full_like(c, float(s))], 1).repeat_interleave(anchors, 0))
    pts = torch.cat(pts)  # (R, 2, 2): centre, stride
    points, stride = pts[:, 0], pts[:, 1]
    r = points.shape[0]
    img_h, img_w = sizes[0][0] * STRIDES[0], sizes[0][1] * STRIDES[0]
    centre = points + (torch.rand(batch, r, 2, generator=g) - 0.5) * stride
    half = stride * (0.5 + 1.5 * torch.rand(batch, r, 2, generator=g))
    pred = torch.cat([centre - half, centre + half], -1)
    scores = torch.sigmoid(torch.randn(batch, r, num_classes, generator=g) * 1.5 - 4.0)
    size = torch.exp(math.log(16) + torch.rand(batch, num_gt, 2, generator=g) * math.log(32))
    xy = torch.rand(batch, num_gt, 2, generator=g) * torch.tensor([img_w, img_h])
    gt = torch.cat([xy - size / 2, xy + size / 2], -1)
    gt = torch.minimum(gt.clamp(min=0), torch.tensor([img_w, img_h] * 2, dtype=torch.float32))
    classes = torch.randint(0, num_classes, (batch, num_gt), generator=g)
    count = torch.randint(num_gt // 2, num_gt + 1, (batch, 1), generator=g)
    valid = torch.arange(num_gt)[None] < count
    out = (scores, pred, points, gt, classes, valid)
    return tuple(x.to(device) for x in out)


def floor_ms(inputs, maps, bandwidth_gbs):
    """(floor, floor+scores) in ms: compulsory bytes / bandwidth (see the module docstring);
    only the valid GTs count."""
    scores, pred, points, gt, classes, valid = inputs
    n, r, _ = scores.shape
    real = int(valid.sum())
    base = n * r * 4 * pred.element_size() + r * 8 + (maps + 1) * n * r * 4
    extra = real * r * scores.element_size()
    return [b / (bandwidth_gbs * 1e9) * 1e3 for b in (base, base + extra)]


class Flush:
    """Evicts the L2 cache: overwrites a buffer far larger than any GPU's L2."""

    def __init__(self, device, mib=256):
        self.buf = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)

    def __call__(self):
        self.buf.fill_(1)


def time_wall(fn, iters, warmup, flush):
    """(median ms of ``fn`` from an idle GPU with a flushed L2 to the end of its GPU work,
    extra peak MiB of one call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - held) / 2**20
    times = []
    for _ in range(iters):
        flush()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), peak


def time_graph(fn, iters, flush):
    """Median GPU ms of ``fn`` captured in a CUDA graph and replayed after an L2 flush (CUDA
    events around the replay only). Capture fails if ``fn`` synchronises with the host."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(iters):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_cpu(fn, iters):
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def configs(anchors, batches=(2, 8, 16), gts=(10, 50, 100)):
    yield "demo", DEMO_SIZES, 1, 8, 4, 6, 9
    for a in anchors:
        for b in batches:
            for g in gts:
                yield f"COCO A={a}", COCO_SIZES, a, b, g, 80, 30


def _ms(x):
    return f"{x:.3f}"


def main(args):
    cuda = torch.cuda.is_available() and not (args.cpu or args.interpret)
    device = torch.device("cuda" if cuda else "cpu")
    flush = Flush(device) if cuda else None
    rows = []
    for name, sizes, a, b, g, k, topk in configs(args.anchors, args.batches, args.gts):
        inputs = make_inputs(sizes, a, b, g, k, device)
        r = inputs[0].shape[1]
        floors = floor_ms(inputs, 2, args.bandwidth_gbs)
        real = int(inputs[5].sum())
        row = {"scale": name, "B": b, "G": g, "real GTs": real, "R": r, "top-k": topk}

        def run_torch():
            return key_region_weights(*inputs, topk=topk, backend="torch")

        def run_triton():
            from kd_det2.ops.key_regions_triton import key_region_weights_triton

            with torch.no_grad():  # what backend="triton" runs
                return key_region_weights_triton(
                    *inputs, topk=topk, block=args.block, emit_block=args.emit_block
                )

        if cuda:
            want, got = run_torch(), run_triton()
            exact = all(torch.equal(x, y) for x, y in zip(want, got))
            t_ref, m_ref = time_wall(run_torch, args.ref_iters, 2, flush)
            t_call, m_ker = time_wall(run_triton, args.iters, args.warmup, flush)
            t_ker = time_graph(run_triton, args.iters, flush)
            row.update({"torch ms": _ms(t_ref), "triton ms": _ms(t_call), "kernel ms": _ms(t_ker)})
            row["speed-up"] = f"{t_ref / t_call:.1f}x"
            row["x floor"] = f"{t_ker / floors[0]:.1f}"
            row["x floor+scores"] = f"{t_ker / floors[1]:.2f}"
            row.update({"equal": exact, "agree": outputs_agree(got, want)[0]})
            row.update({"torch MiB": f"{m_ref:.1f}", "triton MiB": f"{m_ker:.1f}"})
        else:
            pending = "pending (no CUDA)"
            fits = b * g * r <= args.cpu_max_pairs
            row["torch ms (CPU)"] = _ms(time_cpu(run_torch, args.cpu_iters)) if fits else "skipped"
            row.update({"triton ms": pending, "kernel ms": pending, "speed-up": pending})
            row.update({"x floor": pending, "x floor+scores": pending})
        row["floor us"] = f"{floors[0] * 1e3:.1f}"
        row["floor+scores us"] = f"{floors[1] * 1e3:.1f}"
        rows.append(row)
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU (no CUDA)'}")
    print(f"floor: compulsory bytes / {args.bandwidth_gbs:g} GB/s (see the module docstring)")
    print(tabulate(rows, headers="keys", tablefmt="pipe", disable_numparse=True))
    if not cuda:
        print("GPU run pending: rerun this script on a CUDA machine for the kernel's timings.")
        if args.interpret:
            interpret_check()


def interpret_check():
    """Kernel (Triton interpreter) vs PyTorch implementation on a tiny size."""
    inputs = make_inputs([(6, 6), (3, 3)], 1, 2, 3, 4, torch.device("cpu"), seed=1)
    start = time.perf_counter()
    got = key_region_weights(*inputs, topk=9, backend="triton")
    seconds = time.perf_counter() - start
    want = key_region_weights(*inputs, topk=9, backend="torch")
    exact = all(torch.equal(x, y) for x, y in zip(want, got))
    print(f"interpreter check (B=2, G=3, R=45): equal to the PyTorch implementation: {exact} "
          f"({seconds:.1f} s in the interpreter)")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50, help="timed runs of the kernel")
    p.add_argument("--ref-iters", type=int, default=10, help="timed runs of the PyTorch path")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--block", type=int, default=0, help="kernel's entries per merge step (0: auto)")
    p.add_argument("--emit-block", type=int, default=0, help="locations per candidates program")
    p.add_argument("--anchors", type=int, nargs="+", default=[1, 9], help="anchors per location")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 8, 16], help="COCO rows' B")
    p.add_argument("--gts", type=int, nargs="+", default=[10, 50, 100], help="COCO rows' G")
    p.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="memory bandwidth, GB/s")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if CUDA is there")
    p.add_argument("--cpu-iters", type=int, default=3)
    p.add_argument("--cpu-max-pairs", type=int, default=5_000_000)
    p.add_argument(
        "--interpret",
        action="store_true",
        help="CPU only: also check the kernel in the interpreter",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
