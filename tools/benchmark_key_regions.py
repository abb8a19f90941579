#!/usr/bin/env python
"""Benchmark of PGD's key-region weights: the PyTorch implementation vs the fused Triton kernel.

    python tools/benchmark_key_regions.py [--iters 50] [--ref-iters 10] [--bandwidth-gbs 4800]
        [--anchors 1 9] [--interpret]

Inputs are synthetic but shaped like a dense detector's (both maps, xi = 0.8 and 0.6):

* demo scale: 128 px images, FCOS P3-P7 (341 locations), 6 classes, top-9, B = 8, G = 4;
* COCO scale: 1344 x 800 padded images, P3-P7 (22,400 locations per anchor; ``--anchors 9``
  gives RetinaNet's 201,600), 80 classes, top-30, B in {2, 8, 16}, G in {10, 50, 100}.

Teacher probabilities are sigmoid(1.5 z - 4), decoded boxes lie around their location with
a size of 1-4 strides, GT sizes are log-uniform in [16, 512] px, and each image has between
G/2 and G valid GTs (the rest is padding).

On CUDA: median of ``--iters`` (kernel) / ``--ref-iters`` (PyTorch) runs timed with CUDA events
after warm-up; peak memory is ``torch.cuda.max_memory_allocated`` during one call minus the
memory held before it (the inputs). The time floor is the compulsory memory traffic divided by
``--bandwidth-gbs`` (default 4800 GB/s: H200's HBM3e; pass 3350 for an H100 SXM):

* floor: each image's decoded boxes read once (N R 4 s_box bytes), the centres once (R 8), the
  outputs written once ((maps + 1) N R 4: weights zero-filled, background);
* floor+scores: plus the score of the GT's class at every location for every (image, GT)
  (N G R s_score, counted at s_score bytes although the (N, R, K) layout makes each such read
  fetch a 32-byte sector). The kernel reads a block's scores only when the GT overlaps one of
  the block's predicted boxes, so it can beat this column but not the first.

Without CUDA the PyTorch implementation is timed on the CPU (wall clock, rows with more than
``--cpu-max-pairs`` image x GT x location triples are skipped), the kernel columns say that the
GPU run is pending, and ``--interpret`` (CPU only) checks the kernel against it on a tiny size
with Triton's interpreter (TRITON_INTERPRET=1, set by this script before triton is imported).
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
    """(floor, floor+scores) in ms: compulsory bytes / bandwidth (see the module docstring)."""
    scores, pred, points, gt = inputs[:4]
    n, r, _ = scores.shape
    base = n * r * 4 * pred.element_size() + r * 8 + (maps + 1) * n * r * 4
    extra = n * gt.shape[1] * r * scores.element_size()
    return [b / (bandwidth_gbs * 1e9) * 1e3 for b in (base, base + extra)]


def time_cuda(fn, iters, warmup):
    """(median ms over ``iters`` CUDA-event-timed calls, extra peak MiB of one call)."""
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
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak


def time_cpu(fn, iters):
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def configs(anchors):
    yield "demo", DEMO_SIZES, 1, 8, 4, 6, 9
    for a in anchors:
        for b in (2, 8, 16):
            for g in (10, 50, 100):
                yield f"COCO A={a}", COCO_SIZES, a, b, g, 80, 30


def _ms(x):
    return f"{x:.3f}"


def main(args):
    cuda = torch.cuda.is_available() and not (args.cpu or args.interpret)
    device = torch.device("cuda" if cuda else "cpu")
    rows = []
    for name, sizes, a, b, g, k, topk in configs(args.anchors):
        inputs = make_inputs(sizes, a, b, g, k, device)
        r = inputs[0].shape[1]
        floors = [f"{x * 1e3:.1f}" for x in floor_ms(inputs, 2, args.bandwidth_gbs)]
        row = {"scale": name, "B": b, "G": g, "R": r, "top-k": topk}

        def run(backend):
            return key_region_weights(*inputs, topk=topk, backend=backend)

        if cuda:
            want, got = run("torch"), run("triton")
            exact = all(torch.equal(x, y) for x, y in zip(want, got))
            t_ref, m_ref = time_cuda(lambda: run("torch"), args.ref_iters, 2)
            t_ker, m_ker = time_cuda(lambda: run("triton"), args.iters, args.warmup)
            row.update({"torch ms": _ms(t_ref), "triton ms": _ms(t_ker)})
            row.update({"speed-up": f"{t_ref / t_ker:.1f}x", "equal": exact})
            row.update({"torch MiB": f"{m_ref:.1f}", "triton MiB": f"{m_ker:.1f}"})
        elif b * g * r <= args.cpu_max_pairs:
            row["torch ms (CPU)"] = _ms(time_cpu(lambda: run("torch"), args.cpu_iters))
            row["triton ms"] = "pending (no CUDA)"
        else:
            row.update({"torch ms (CPU)": "skipped", "triton ms": "pending (no CUDA)"})
        row.update({"floor us": floors[0], "floor+scores us": floors[1]})
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
    p.add_argument("--anchors", type=int, nargs="+", default=[1, 9], help="anchors per location")
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
