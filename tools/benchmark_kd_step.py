#!/usr/bin/env python
"""Time a KD training step: student alone, + teacher forward, + distillers.

    python tools/benchmark_kd_step.py --config-file projects/demo/fcos_pgd.yaml \
        --iters 20 --warmup 3 [KEY VALUE ...]

Builds the KD model from the config (the teacher with random weights when its checkpoint is
missing: the cost does not depend on the weights), draws batches from the config's training
loader, and times (synchronised wall clock, forward + backward + optimizer step) on each batch:

* the student alone (its own losses),
* the student + the teacher's forward under no_grad (distiller-free),
* the full KD step (student + teacher + distillers, one backward of all losses).

Prints medians in ms per iteration, what each addition costs, and the share of the KD step.
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


def _now(device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock()


def _step(model, optimizer, batch, mode: str, clock=time.perf_counter) -> float:
    """One training step in ``mode``; returns its seconds (of ``clock``). Modes: "student" (the
    student alone), "teacher" (+ the teacher's forward without grad), "kd" (+ the distillers on
    the no-grad capture), "wrapper" (the KD wrapper's own forward, for distillers that declare
    ``needs``, e.g. GKD's teacher losses with a graph)."""
    device = model.device
    start = _now(device, clock)
    if mode == "wrapper":
        losses = model(batch)
    else:
        gt = [x["instances"].to(device) for x in batch]
        losses, s_out = model.student_step(batch, gt)
        if mode != "student":
            with torch.no_grad():
                t_out = model.teacher_step(model.teacher_inputs(batch), s_out)
            if mode == "kd":
                losses.update(model.distill(t_out, s_out, gt))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return _now(device, clock) - start


def variant_config(config: str, opts, device: str):
    """A KD config for a cost benchmark: ``opts`` merged, ``device``, no loader workers, and a
    teacher with random weights when its checkpoint is missing (the cost does not depend on
    them)."""
    cfg = get_kd_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "0"])
    if not os.path.isfile(cfg.MODEL.KD.TEACHER.WEIGHTS):
        cfg.MODEL.KD.TEACHER.WEIGHTS = ""
        cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    return cfg


def interleaved_step_ms(cfgs, iters: int, warmup: int, kd_mode: str = "kd", cpu_time=False):
    """Median ms of a training step for each variant of ``cfgs`` (name -> KD config), plus
    "student" (the first variant's student alone) and "teacher" (+ its teacher's forward without
    grad). Every variant runs on every batch, one after the other, so that load changes of the
    machine affect them alike.

    Args:
        kd_mode: how the variants run, "kd" or "wrapper" (see :func:`_step`).
        cpu_time: the process's CPU time (all its threads) instead of the wall clock: on a shared
            CPU machine, other processes then inflate the numbers much less.
    """
    clock = time.process_time if cpu_time else time.perf_counter
    base = next(iter(cfgs.values()))
    prepare_datasets(base)
    models, optimizers = {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        models[name] = build_model(cfg).train()
        optimizers[name] = KDTrainer.build_optimizer(cfg, models[name])
    first = next(iter(models))
    loader = iter(build_detection_train_loader(base))
    times = {"student": [], "teacher": [], **{name: [] for name in models}}
    with EventStorage():
        for step in range(warmup + iters):
            batch = next(loader)
            runs = [("student", first, "student"), ("teacher", first, "teacher")]
            runs += [(name, name, kd_mode) for name in models]
            for key, name, mode in runs:
                seconds = _step(models[name], optimizers[name], batch, mode, clock)
                if step >= warmup:
                    times[key].append(seconds * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(cfg, iters: int, warmup: int) -> dict:
    """Median milliseconds of a training step in each mode, over ``iters`` batches after
    ``warmup``; the three modes run back to back on each batch, so drifts in machine load affect
    them alike."""
    model = build_model(cfg)
    model.train()
    optimizer = KDTrainer.build_optimizer(cfg, model)
    loader = iter(build_detection_train_loader(cfg))
    times = {"student": [], "teacher": [], "kd": []}
    with EventStorage():
        for step in range(warmup + iters):
            batch = next(loader)
            for mode in times:
                seconds = _step(model, optimizer, batch, mode)
                if step >= warmup:
                    times[mode].append(seconds)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = get_kd_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not os.path.isfile(cfg.MODEL.KD.TEACHER.WEIGHTS):
        cfg.MODEL.KD.TEACHER.WEIGHTS = ""  # timing does not depend on the weights
        cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    prepare_datasets(cfg)
    torch.manual_seed(0)
    ms = measure(cfg, args.iters, args.warmup)
    kd = ms["kd"]
    names = "+".join(cfg.MODEL.KD.DISTILLERS)
    rows = [
        ("student alone", ms["student"], None, ms["student"] / kd),
        (
            "student + teacher forward",
            ms["teacher"],
            ms["teacher"] - ms["student"],
            ms["teacher"] / kd,
        ),
        (f"student + teacher + {names}", kd, kd - ms["teacher"], 1.0),
    ]
    print(
        f"{args.config_file}: median of {args.iters} iterations, batch "
        f"{cfg.SOLVER.IMS_PER_BATCH}, {torch.get_num_threads()} threads, device {cfg.MODEL.DEVICE}"
    )
    headers = ["training step", "ms / iter", "added ms", "of KD step"]
    print(tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=("", ".1f", ".1f", ".1%")))


if __name__ == "__main__":
    main()
