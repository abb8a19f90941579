#!/usr/bin/env python
"""The per-iteration cost of GKD's gradient-guided maps (and of BMFI) at demo scale.

    python tools/benchmark_gkd.py [--config projects/demo/gfl_gkd.yaml] [--iters 10]
        [--warmup 2] [--cpu-time] [--device cpu]

Training step (forward, backward, optimizer step) of the demo GFL student (R18-FPN64, 128 px,
batch 8) with the demo GFL teacher (R18-FPN128): median ms per iteration of the student alone,
+ the teacher's forward without grad (what a feature-imitation distiller pays), and each GKD
variant through the KD wrapper's own forward (the teacher's losses with a graph on its neck
outputs, the maps' gradients, the loss): GKD against the GT, against pseudo-GT, GKD + BMFI.
Every variant runs on every batch, one after the other, so that load changes of the machine
affect them alike; the ratios to the student step are the numbers to compare across machines.
"""
import argparse
import os
import sys

import torch
from tabulate import tabulate

import kd_det2  # noqa: F401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_kd_step import interleaved_step_ms, variant_config  # noqa: E402

#: variant -> MODEL.KD.GKD overrides
VARIANTS = {
    "GKD (gt)": [],
    "GKD (pseudo)": ["MODEL.KD.GKD.CAM_TARGET", "pseudo"],
    "GKD + BMFI (gt)": ["MODEL.KD.GKD.ALPHA", "1e-3", "MODEL.KD.GKD.GAMMA", "5e-4"]
    + ["MODEL.KD.GKD.LAMBDA", "5e-6"],
}


def step_table(config: str, iters: int, warmup: int, device: str, cpu_time: bool = False):
    """Rows of median ms per training step, for the student alone, + the teacher's forward and
    each GKD variant (the wrapper's own forward), with the ratio to the student alone."""
    cfgs = {}
    for name, opts in VARIANTS.items():
        cfgs[name] = variant_config(config, opts + ["MODEL.KD.WARMUP_ITERS", "0"], device)
    ms = interleaved_step_ms(cfgs, iters, warmup, "wrapper", cpu_time)
    ms["student alone"] = ms.pop("student")
    ms["+ teacher forward (no grad)"] = ms.pop("teacher")
    order = ["student alone", "+ teacher forward (no grad)", *VARIANTS]
    return [
        {"training step": k, "ms / iter": ms[k], "/ student alone": ms[k] / ms["student alone"]}
        for k in order
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="projects/demo/gfl_gkd.yaml")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cpu-time", action="store_true", help="CPU time of the process instead of wall time"
    )
    args = parser.parse_args(argv)
    rows = step_table(args.config, args.iters, args.warmup, args.device, args.cpu_time)
    clock = "CPU time (all threads)" if args.cpu_time else "wall time"
    print(
        f"\nTraining step, {args.config}: median of {args.iters} iterations after {args.warmup}, "
        f"device {args.device}, {torch.get_num_threads()} threads, {clock}"
    )
    print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".2f"))


if __name__ == "__main__":
    main()
