#!/usr/bin/env python
"""Time the RM and PFI distillers alone at demo and COCO scale (random tensors).

    python tools/benchmark_rm_pfi.py [--iters 3] [--device cpu|cuda]

For each setting it times, as medians in ms, each distiller's forward + backward on random head
predictions, neck features and label assignments (GTs per image G, each with ``POSITIVES``
positive anchors drawn at random): the demo's FCOS (A = 1, K = 6, 128 px, student FPN 64 ->
teacher 128 channels, centerness) and COCO RetinaNet (A = 9, K = 80, 800 x 1344 px, 256
channels). The whole-step cost inside training is measured by tools/benchmark_kd_step.py.
"""
import argparse
import statistics
import time

import torch
from tabulate import tabulate

from kd_det2.modeling.distillers import PFI, RM
from kd_det2.modeling.outputs import DetectorOutputs

LEVELS = ["p3", "p4", "p5", "p6", "p7"]
STRIDES = [8, 16, 32, 64, 128]
POSITIVES = 20
#: (name, height, width, anchors A, classes K, student channels, teacher channels, quality)
SCALES = [
    ("demo FCOS 128 px", 128, 128, 1, 6, 64, 128, "ctrness"),
    ("COCO RetinaNet 800x1344", 800, 1344, 9, 80, 256, 256, None),
]


def _outputs(b, h, w, a, k, c, quality, device, grad):
    shapes = [(-(-h // s), -(-w // s)) for s in STRIDES]
    preds = {"cls_logits": [torch.randn(b, a * k, y, x, device=device) for y, x in shapes]}
    if quality:
        preds[quality] = [torch.randn(b, a, y, x, device=device) for y, x in shapes]
    feats = {f: torch.randn(b, c, y, x, device=device) for f, (y, x) in zip(LEVELS, shapes)}
    if grad:
        for x in [*preds["cls_logits"], *feats.values()]:
            x.requires_grad_(True)
    return DetectorOutputs(None, {}, feats, list(LEVELS), predictions=preds)


def _assignment(b, r, g, k, device):
    """Each of the G GTs of an image gets POSITIVES distinct random anchors (fewer when the
    image has fewer than G x POSITIVES anchors)."""
    labels = torch.full((b, r), k, dtype=torch.long, device=device)
    index = torch.full((b, r), -1, dtype=torch.long, device=device)
    for i in range(b):
        per_gt = min(POSITIVES, r // g)
        anchors = torch.randperm(r, device=device)[: g * per_gt].view(g, per_gt)
        gts = torch.arange(g, device=device)[:, None].expand_as(anchors)
        index[i, anchors.flatten()] = gts.flatten()
        labels[i, anchors.flatten()] = torch.randint(0, k, (g,), device=device)[gts.flatten()]
    return {"gt_labels": labels, "gt_index": index}


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
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for name, h, w, a, k, cs, ct, quality in SCALES:
        rm = RM(num_classes=k, quality=quality).to(device)
        pfi = PFI(
            head_in_features=LEVELS,
            student_channels={f: cs for f in LEVELS},
            teacher_channels={f: ct for f in LEVELS},
            quality=quality,
        ).to(device)
        for b, g in ((2, 10), (2, 50), (8, 10)):
            student = _outputs(b, h, w, a, k, cs, quality, device, grad=True)
            teacher = _outputs(b, h, w, a, k, ct, quality, device, grad=False)
            r = sum(x.shape[-2] * x.shape[-1] for x in student.predictions["cls_logits"]) * a
            student.assignment = _assignment(b, r, g, k, device)

            def run(distiller):
                return lambda: sum(distiller(teacher, student, []).values()).backward()

            rows.append({
                "setting": name, "B": b, "G": g, "anchors R": r,
                "RM fwd+bwd ms": round(_time(run(rm), args.iters, device), 1),
                "PFI fwd+bwd ms": round(_time(run(pfi), args.iters, device), 1),
            })  # fmt: skip
    print(f"RM and PFI distillers, median of {args.iters} after one warm-up call, device "
          f"{device}, {torch.get_num_threads()} threads")  # fmt: skip
    print(tabulate(rows, headers="keys", tablefmt="pipe"))


if __name__ == "__main__":
    main()
