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
import statistics
import time

import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate

import kd_det2  # noqa: F401
from kd_det2.config import get_kd_cfg
from kd_det2.engine import KDTrainer, prepare_datasets

#: variant -> MODEL.KD.GKD overrides
VARIANTS = {
    "GKD (gt)": [],
    "GKD (pseudo)": ["MODEL.KD.GKD.CAM_TARGET", "pseudo"],
    "GKD + BMFI (gt)": ["MODEL.KD.GKD.ALPHA", "1e-3", "MODEL.KD.GKD.GAMMA", "5e-4"]
    + ["MODEL.KD.GKD.LAMBDA", "5e-6"],
}


def _cfg(config: str, opts, device: str):
    cfg = get_kd_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts + ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "0"])
    cfg.MODEL.KD.WARMUP_ITERS = 0
    if not os.path.isfile(cfg.MODEL.KD.TEACHER.WEIGHTS):
        cfg.MODEL.KD.TEACHER.WEIGHTS = ""  # the cost does not depend on the weights
        cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    return cfg


def _step(model, optimizer, batch, mode: str, clock) -> float:
    """Seconds of one training step: "student" (alone), "teacher" (+ the teacher's forward
    without grad), "kd" (the wrapper's forward with its distillers)."""
    device = model.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    if mode == "kd":
        losses = model(batch)
    else:
        gt = [x["instances"].to(device) for x in batch]
        losses, s_out = model.student_step(batch, gt)
        if mode == "teacher":
            with torch.no_grad():
                model.teacher_step(model.teacher_inputs(batch), s_out)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def step_table(config: str, iters: int, warmup: int, device: str, cpu_time: bool = False):
    """Rows of median ms per training step, for the student alone, + the teacher's forward and
    each GKD variant, with the ratio to the student alone."""
    clock = time.process_time if cpu_time else time.perf_counter
    cfgs = {name: _cfg(config, opts, device) for name, opts in VARIANTS.items()}
    base = next(iter(cfgs.values()))
    prepare_datasets(base)
    models, optimizers = {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg).train()
        optimizers[name] = KDTrainer.build_optimizer(cfg, models[name])
    first = next(iter(models))
    loader = iter(build_detection_train_loader(base))
    times = {"student alone": [], "+ teacher forward (no grad)": [], **{n: [] for n in models}}
    with EventStorage():
        for step in range(warmup + iters):
            batch = next(loader)
            runs = [("student alone", first, "student")]
            runs += [("+ teacher forward (no grad)", first, "teacher")]
            runs += [(name, name, "kd") for name in models]
            for key, name, mode in runs:
                seconds = _step(models[name], optimizers[name], batch, mode, clock)
                if step >= warmup:
                    times[key].append(seconds * 1000)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return [
        {"training step": k, "ms / iter": v, "/ student alone": v / ms["student alone"]}
        for k, v in ms.items()
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
