#!/usr/bin/env python
"""The per-iteration cost of HGD's all-stage imitation.

    python tools/benchmark_hgd.py [--iters 10] [--warmup 2] [--distiller-iters 3] [--skip-step]
        [--device cpu]

1. Training step at demo scale (``projects/demo/fcos_R_18_hgd.yaml``: FCOS R18 teacher and
   student, 128 px, batch 8; with --step-config another config): median ms per iteration of the
   student alone, + the teacher's forward, + HGD, for HGD on all stages (res2-res5 + P3-P7),
   on the neck levels only, on the bottom-up stages only, and with the cross-forward terms.
   The variants run back to back on each batch (tools/benchmark_kd_step.py).
2. The distiller alone on random taps, at demo scale (R18-FPN64 <- R18-FPN128, 8 images of
   128 px, 3 GT boxes each) and COCO scale (R50 <- R101 taps, 2 images of 800 x 1344, 10 GT boxes
   each): median ms of HGD's forward + backward for the same stage sets (no cross-forward: it
   needs the teacher's stages).
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
from kd_det2.config import get_kd_cfg
from kd_det2.engine import prepare_datasets
from kd_det2.modeling.distillers import HGD
from kd_det2.modeling.outputs import DetectorOutputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_kd_step import measure  # noqa: E402

#: variant -> MODEL.KD.HGD overrides
VARIANTS = {
    "all stages (res2-res5, P3-P7)": [],
    "neck only (P3-P7)": ["MODEL.KD.HGD.BACKBONE", "False"],
    "bottom-up only (res2-res5)": ["MODEL.KD.HGD.NECK", "False"],
    "all stages + cross-forward": ["MODEL.KD.HGD.CROSS_FORWARD", "True"],
}
#: scale -> (student taps, teacher taps, images, height, width, GTs per image); taps are
#: name -> (channels, stride)
_R18 = {"res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)}
_R50 = {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def _fpn(width):
    return {f"p{i}": (width, 2**i) for i in range(3, 8)}


SCALES = {
    "demo (R18-FPN64 <- R18-FPN128, 8 x 128 x 128)": (
        {"backbone": _R18, "neck": _fpn(64)},
        {"backbone": _R18, "neck": _fpn(128)},
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


def step_table(config: str, iters: int, warmup: int, device: str):
    rows = []
    for name, opts in VARIANTS.items():
        cfg = get_kd_cfg()
        cfg.merge_from_file(config)
        cfg.merge_from_list(opts + ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "0"])
        if not os.path.isfile(cfg.MODEL.KD.TEACHER.WEIGHTS):
            cfg.MODEL.KD.TEACHER.WEIGHTS = ""  # the cost does not depend on the weights
            cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
        prepare_datasets(cfg)
        torch.manual_seed(0)
        ms = measure(cfg, iters, warmup)
        rows.append(
            {
                "HGD on": name,
                "student ms": ms["student"],
                "+ teacher ms": ms["teacher"],
                "+ HGD ms": ms["kd"],
                "HGD adds ms": ms["kd"] - ms["teacher"],
                "HGD / student step": (ms["kd"] - ms["teacher"]) / ms["student"],
            }
        )
    return rows


def _timed(fn, iters: int, device: torch.device) -> float:
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


def distiller_table(iters: int, device: torch.device):
    """HGD's forward + backward alone on random taps, per scale and stage set."""
    rows = []
    groups = {"all stages": ["backbone", "neck"], "neck only": ["neck"]}
    groups["bottom-up only"] = ["backbone"]
    for scale, (s_taps, t_taps, n, h, w, num_gt) in SCALES.items():
        images = ImageList(torch.zeros(n, 3, h, w, device=device), [(h, w)] * n)
        gts = []
        for _ in range(n):
            xy = torch.rand(num_gt, 2, device=device) * torch.tensor([w * 0.7, h * 0.7])
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
        for name, g in groups.items():
            hgd = HGD(student_taps=s_taps, teacher_taps=t_taps, groups=g).to(device).train()

            def run():
                hgd(teacher, student, gts)["loss_kd_hgd"].backward()

            ms = _timed(run, iters, device)
            rows.append({"scale": scale, "HGD on": name, "terms": len(hgd.term_names), "ms": ms})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step-config", default="projects/demo/fcos_R_18_hgd.yaml")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--distiller-iters", type=int, default=3, help="distiller-alone repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-step", action="store_true", help="only time the distiller alone")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if not args.skip_step:
        rows = step_table(args.step_config, args.iters, args.warmup, args.device)
        print(f"\nTraining step, {args.step_config}: median of {args.iters} iterations after "
              f"{args.warmup}, device {device}, {threads} threads")  # fmt: skip
        print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".2f"))
    rows = distiller_table(args.distiller_iters, device)
    print(
        f"\nHGD alone (forward + backward on random taps): median of {args.distiller_iters} "
        f"after one warm-up call, device {device}, {threads} threads"
    )
    print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".1f"))


if __name__ == "__main__":
    main()
