"""Train-and-evaluate runs shared by the demo and the method benchmark (``tools/``).

A run trains a yacs config from scratch with :class:`KDTrainer`, timing every training iteration,
then evaluates the trained model once with COCOEvaluator on ``DATASETS.TEST``. Its result is a
small JSON record written atomically and keyed by a hash of the resolved config
(:func:`config_sha1`), so that a run whose config is unchanged is reused instead of retrained.
"""

import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.utils.env import seed_all_rng

from .trainer import KDTrainer

__all__ = [
    "METRICS",
    "TimedKDTrainer",
    "cached_record",
    "config_sha1",
    "device_name",
    "evaluate",
    "file_sha1",
    "set_max_iter",
    "train_and_evaluate",
    "train_and_record",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

#: COCO bbox metrics (%) kept in run records.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def set_max_iter(cfg, iters: int) -> None:
    """Set ``SOLVER.MAX_ITER`` to ``iters`` and scale the LR decay ``SOLVER.STEPS`` with it
    (rounded down; steps that fall on iteration 0 are dropped), so that a shortened schedule
    keeps its shape."""
    old = int(cfg.SOLVER.MAX_ITER)
    steps = (int(s) * int(iters) // old for s in cfg.SOLVER.STEPS)
    cfg.SOLVER.STEPS = tuple(s for s in steps if s > 0)
    cfg.SOLVER.MAX_ITER = int(iters)


def config_sha1(cfg, drop: Sequence[str] = ()) -> str:
    """SHA-1 of the dump of ``cfg`` without the dotted keys (or sub-nodes) in ``drop``."""
    cfg = cfg.clone()
    cfg.defrost()
    for key in drop:
        *parents, last = key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name)
            if node is None:
                break
        if node is not None:
            node.pop(last, None)
    return hashlib.sha1(cfg.dump().encode()).hexdigest()


def file_sha1(path: str, chunk: int = 1 << 22) -> str:
    """SHA-1 of a file's bytes (e.g. a checkpoint, to key the runs that depend on it)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cached_record(path: str, key: str, needs: Sequence[str] = ()) -> Optional[dict]:
    """The record at ``path`` when it exists, parses, has ``config_sha1 == key`` and every file
    of ``needs`` exists (e.g. the checkpoint it describes); otherwise None."""
    if not os.path.isfile(path) or not all(os.path.isfile(p) for p in needs):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("config_sha1") == key else None


def device_name(cfg) -> str:
    """The training device of ``cfg`` in words, e.g. "NVIDIA H200" or "CPU (x86_64, 2 threads)"."""
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{device.type.upper()} ({cpu}, {torch.get_num_threads()} threads)"


class TimedKDTrainer(KDTrainer):
    """:class:`KDTrainer` that records the wall time of every training iteration.

    ``step_seconds[i]`` covers ``run_step`` of iteration i: loading the batch, forward (student,
    teacher and distillers), backward and the optimizer step; hooks (checkpoints, logging,
    evaluation) are outside it. On CUDA the device is synchronised around each step.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.step_seconds: List[float] = []
        self._cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def run_step(self):
        start = self._now()
        super().run_step()
        self.step_seconds.append(self._now() - start)


def evaluate(cfg, model) -> Dict[str, float]:
    """COCO bbox metrics (%) of ``model`` on the single dataset of ``cfg.DATASETS.TEST``."""
    if len(cfg.DATASETS.TEST) != 1:
        raise ValueError(f"evaluate() needs one test dataset, got {list(cfg.DATASETS.TEST)}")
    results = KDTrainer.test(cfg, model)
    bbox = results.get("bbox", {})
    return {k: float(bbox.get(k, float("nan"))) for k in METRICS}


def _step_summary(seconds: List[float], skip: int) -> Dict[str, float]:
    """Mean and median seconds per iteration without the first ``skip`` iterations (at least one
    iteration is kept)."""
    skip = max(0, min(int(skip), len(seconds) - 1))
    kept = seconds[skip:]
    if not kept:
        return {"mean": float("nan"), "median": float("nan"), "count": 0, "skipped": 0}
    return {
        "mean": statistics.fmean(kept),
        "median": statistics.median(kept),
        "count": len(kept),
        "skipped": skip,
    }


def train_and_evaluate(cfg, skip_iters: int = 5) -> dict:
    """Train ``cfg`` from scratch with :class:`TimedKDTrainer`, then evaluate it once.

    ``cfg`` is not modified. The trainer's own end-of-training evaluation is disabled, so that
    the timed training contains no evaluation.

    Args:
        cfg: a yacs config (plain detector or KD wrapper) with one test dataset.
        skip_iters: first iterations left out of the seconds-per-iteration statistics (warm-up).

    Returns:
        dict with "metrics" (:data:`METRICS` -> %), "train_time" (seconds of ``trainer.train``),
        "iters", "step_seconds" (mean, median, count, skipped) and "device".
    """
    test_sets = tuple(cfg.DATASETS.TEST)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = TimedKDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.DATASETS.TEST = test_sets
    metrics = evaluate(eval_cfg, trainer.model)
    steps = list(trainer.step_seconds)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "metrics": metrics,
        "train_time": seconds,
        "iters": len(steps),
        "step_seconds": _step_summary(steps, skip_iters),
        "device": device_name(cfg),
    }


def train_and_record(cfg, path: str, key: str, skip_iters: int = 5, **extra) -> dict:
    """:func:`train_and_evaluate`, then write the record (``config_sha1`` = ``key``, ``extra``
    fields, the results and "wall_time", training + evaluation) atomically to ``path``."""
    start = time.perf_counter()
    result = train_and_evaluate(cfg, skip_iters)
    record = {"config_sha1": key, **extra, **result}
    record["wall_time"] = time.perf_counter() - start
    write_json_atomic(path, record)
    return record
