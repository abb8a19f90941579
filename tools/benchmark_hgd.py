#!/usr/bin/env python
"""The per-iteration cost of HGD's all-stage imitation.

    python tools/benchmark_hgd.py [--iters 10] [--warmup 2] [--distiller-iters 5] [--skip-step]
        [--cpu-time] [--device cpu]

1. Training step at demo scale (``projects/demo/fcos_hgd.yaml``: FCOS EfficientNet-Lite2
   teacher, FCOS MobileNetV2 student, 128 px, batch 8; with --step-config another config): median
   ms per iteration of the student alone, + the teacher's forward, + HGD, for HGD on the config's
   stages (the demo's: stage3-stage5 + P3-P7), on the neck levels only, on the bottom-up stages
   only, and with the cross-forward terms.
   Every variant runs on every batch, one after the other, so that load changes of the machine
   affect them alike.
2. The distiller alone on random taps, at demo scale (MobileNetV2 <- EfficientNet-Lite2
   stage3-stage5 and 64-channel P3-P7, 8 images of 128 px, 3 GT boxes each) and COCO scale (R50
   <- R101 res2-res5 and 256-channel P3-P7, 2 images of 800 x 1344, 10 GT boxes each): median ms
   of HGD's forward + backward for the same stage sets (no cross-forward: it needs the teacher's
   stages).
"""
import argparse
import os
import statistics
import sys
import time

import torch
from detectron2.structures import Boxes, ImageList, Instances
from tabulate import tabulate

import kd_det2  # noqa: F401
from kd_det2.modeling.distillers import HGD
from kd_det2.modeling.outputs import DetectorOutputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_kd_step import interleaved_step_ms, variant_config  # noqa: E402

#: variant -> MODEL.KD.HGD overrides
VARIANTS = {
    "all stages (bottom-up, P3-P7)": [],
    "neck only (P3-P7)": ["MODEL.KD.HGD.BACKBONE", "False"],
    "bottom-up only": ["MODEL.KD.HGD.NECK", "False"],
    "all stages + cross-forward": ["MODEL.KD.HGD.CROSS_FORWARD", "True"],
}
#: scale -> (student taps, teacher taps, images, height, width, GTs per image); taps are
#: name -> (channels, stride)
# the demo's stage3-stage5 (stage2 is frozen in the demo student, so left out)
_MOBILENET_V2 = {"stage3": (32, 8), "stage4": (96, 16), "stage5": (1280, 32)}
_LITE2 = {"stage3": (48, 8), "stage4": (120, 16), "stage5": (352, 32)}
_R50 = {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def _fpn(width):
    return {f"p{i}": (width, 2**i) for i in range(3, 8)}


SCALES = {
    "demo (MobileNetV2-FPN64 <- EfficientNet-Lite2-FPN64, 8 x 128 x 128)": (
        {"backbone": _MOBILENET_V2, "neck": _fpn(64)},
        {"backbone": _LITE2, "neck": _fpn(64)},
        8,
        128,
        128,
        3,
    ),
    "COCO (R50-FPN <- R101-FPN, 2 x 800 x 1344)": (
        {"backbone": _R50, "neck": _fpn(256)},
        {"backbone": _R50, "neck": _fpn(256)},
        2,
        800,
        1344,
        10,
    ),
}


def step_table(config: str, iters: int, warmup: int, device: str, cpu_time: bool = False):
    """Median ms of a training step (forward, backward, optimizer step) of the student alone,
    with the teacher's forward, and with each HGD variant; every variant runs on every batch, one
    after the other, so that load changes of the machine affect them alike.

    Args:
        cpu_time: measure the process's CPU time (all its threads) instead of the wall clock:
            on a shared CPU machine, other processes then inflate the numbers much less.
    """
    cfgs = {name: variant_config(config, opts, device) for name, opts in VARIANTS.items()}
    ms = interleaved_step_ms(cfgs, iters, warmup, "kd", cpu_time)
    rows = [{"training step": "student alone", "ms / iter": ms["student"]}]
    rows.append({"training step": "+ teacher forward", "ms / iter": ms["teacher"]})
    for name in VARIANTS:
        added = ms[name] - ms["teacher"]
        rows.append(
            {
                "training step": f"+ HGD, {name}",
                "ms / iter": ms[name],
                "HGD adds ms": added,
                "HGD / student step": added / ms["student"],
            }
        )
    return rows


def _timed(hgd, teacher, student, gts, device: torch.device, cpu_time: bool = False) -> float:
    """Milliseconds of one forward + backward of ``hgd`` (wall clock, or CPU time)."""
    clock = time.process_time if cpu_time else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    hgd(teacher, student, gts)["loss_kd_hgd"].backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (clock() - start) * 1000


def distiller_table(iters: int, device: torch.device, cpu_time: bool = False):
    """HGD's forward + backward alone on random taps, per scale and stage set."""
    rows = []
    groups = {"all stages": ["backbone", "neck"], "neck only": ["neck"]}
    groups["bottom-up only"] = ["backbone"]
    for scale, (s_taps, t_taps, n, h, w, num_gt) in SCALES.items():
        images = ImageList(torch.zeros(n, 3, h, w, device=device), [(h, w)] * n)
        gts = []
        for _ in range(n):
            xy = torch.rand(num_gt, 2, device=device) * torch.tensor(
                [w * 0.7, h * 0.7], device=device
            )
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + torch.rand_like(xy) * h * 0.3 + 8], 1))
            gts.append(inst)

        def maps(taps, grad):
            return {
                group: {
                    k: torch.randn(n, c, -(-h // r), -(-w // r), device=device, requires_grad=grad)
                    for k, (c, r) in shapes.items()
                }
                for group, shapes in taps.items()
            }

        s, t = maps(s_taps, True), maps(t_taps, False)
        student = DetectorOutputs(images, s["backbone"], s["neck"], list(s["neck"]))
        teacher = DetectorOutputs(images, t["backbone"], t["neck"], list(t["neck"]))
        distillers = {
            name: HGD(student_taps=s_taps, teacher_taps=t_taps, groups=g).to(device).train()
            for name, g in groups.items()
        }
        times = {name: [] for name in distillers}
        for rep in range(iters + 1):  # the first repetition warms up
            for name, hgd in distillers.items():
                times[name].append(_timed(hgd, teacher, student, gts, device, cpu_time))
        for name, hgd in distillers.items():
            ms = statistics.median(times[name][1:])
            rows.append({"scale": scale, "HGD on": name, "terms": len(hgd.term_names), "ms": ms})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step-config", default="projects/demo/fcos_hgd.yaml")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--distiller-iters", type=int, default=5, help="distiller-alone repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-step", action="store_true", help="only time the distiller alone")
    parser.add_argument(
        "--cpu-time", action="store_true", help="CPU time of the process instead of wall time"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    clock = "CPU time (all threads)" if args.cpu_time else "wall time"
    if not args.skip_step:
        rows = step_table(args.step_config, args.iters, args.warmup, args.device, args.cpu_time)
        print(f"\nTraining step, {args.step_config}: median of {args.iters} iterations after "
              f"{args.warmup}, device {device}, {threads} threads, {clock}")  # fmt: skip
        print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".2f", missingval=""))
    rows = distiller_table(args.distiller_iters, device, args.cpu_time)
    print(
        f"\nHGD alone (forward + backward on random taps): median of {args.distiller_iters} "
        f"after one warm-up call, device {device}, {threads} threads, {clock}"
    )
    print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".1f"))


if __name__ == "__main__":
    main()
