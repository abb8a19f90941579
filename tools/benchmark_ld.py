#!/usr/bin/env python
"""Time the LD distiller alone at demo and COCO scale (random predictions, random GTs).

    python tools/benchmark_ld.py [--iters 5] [--device cpu|cuda]

For each (batch B, GTs per image G, input size) it times, as medians in ms: the region
selection (the student's ATSS assignment, IoU/DIoU with every GT, the VLR) and the whole
distiller forward + backward (regions, main LD, VLR LD, class KD), with GFL's R50 head shapes
(K = 80 classes at COCO scale, 6 at demo scale, n = 16, strides 8-128).
"""
import argparse
import statistics
import time

import torch
from detectron2.structures import Boxes, Instances
from tabulate import tabulate

from kd_det2.modeling.detectors import build_gfl_anchor_generator
from kd_det2.modeling.distillers import LD
from kd_det2.modeling.outputs import DetectorOutputs

STRIDES = [8, 16, 32, 64, 128]
#: (name, image height, width, classes)
SCALES = [("demo 128 px", 128, 128, 6), ("COCO 800x1344", 800, 1344, 80)]


def _outputs(b, h, w, k, device, grad):
    shapes = [(-(-h // s), -(-w // s)) for s in STRIDES]
    gen = build_gfl_anchor_generator(STRIDES, 8.0)
    preds = {
        "cls_logits": [torch.randn(b, k, y, x, device=device) for y, x in shapes],
        "box_deltas": [torch.randn(b, 68, y, x, device=device) for y, x in shapes],
    }
    if grad:
        for x in preds["cls_logits"] + preds["box_deltas"]:
            x.requires_grad_(True)
    anchors = gen([torch.zeros(1, 1, y, x, device=device) for y, x in shapes])
    return DetectorOutputs(
        None, {}, {}, [f"p{i}" for i in range(3, 8)], predictions=preds, anchors=anchors
    )


def _gts(b, g, h, w, k, device):
    out = []
    for _ in range(b):
        xy = torch.rand(g, 2, device=device) * torch.tensor([w * 0.8, h * 0.8], device=device)
        wh = torch.rand(g, 2, device=device) * min(h, w) * 0.3 + 8
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, k, (g,), device=device)
        out.append(inst)
    return out


def _time(fn, iters, device):
    times = []
    for _ in range(iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1000  # the first call warms up


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ld = LD()
    rows = []
    for name, h, w, k in SCALES:
        for b, g in ((2, 10), (2, 50), (8, 10)):
            student = _outputs(b, h, w, k, device, grad=True)
            teacher = _outputs(b, h, w, k, device, grad=False)
            gts = _gts(b, g, h, w, k, device)

            def full():
                sum(ld(teacher, student, gts).values()).backward()

            r = sum(a.tensor.shape[0] for a in student.anchors)
            rows.append({
                "scale": name, "B": b, "G": g, "locations R": r,
                "regions ms": round(_time(lambda: ld.regions(student.anchors, gts), args.iters,
                                          device), 1),
                "LD fwd+bwd ms": round(_time(full, args.iters, device), 1),
            })  # fmt: skip
    print(f"LD distiller, median of {args.iters} after one warm-up call, device {device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(tabulate(rows, headers="keys", tablefmt="pipe"))


if __name__ == "__main__":
    main()
