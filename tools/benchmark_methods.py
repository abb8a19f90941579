#!/usr/bin/env python
"""Benchmark distillation methods: one teacher, the plain student and each method, over seeds.

    python tools/benchmark_methods.py \\
        --student-config projects/demo/fcos_student.yaml \\
        --teacher-config projects/demo/fcos_teacher.yaml \\
        --methods "PGD,FitNet+LogitKD,pgd-a=PGD@MODEL.KD.PGD.ALPHA=0.01" \\
        --seeds 0,1,2 --output output/bench_fcos [--dataset-train NAME] [--dataset-test NAME] \\
        [--student-iters N] [--teacher-iters N] [--teacher-weights PTH] [--inherit] \\
        [--teacher-opts "KEY VALUE ..."] [KEY VALUE ...]

What it does, on one dataset and one schedule:

1. trains the teacher (``--teacher-config``, a plain detectron2 yacs config) under
   ``OUTPUT/teacher/``, or reuses it when its checkpoint and resolved config are unchanged, or
   only evaluates ``--teacher-weights`` when given;
2. trains, for every seed, the plain student (``--student-config``: a KD-wrapper config with
   ``MODEL.KD.DISTILLERS []``) and the student with each method, with ``KDTrainer``, each under
   ``OUTPUT/runs/<label>/seed<k>/``, and evaluates it with COCOEvaluator on the test dataset;
3. writes ``OUTPUT/results.md``, ``results.csv`` and ``results.png`` (refreshed after every run):
   AP, AP50, AP75, APs, APm, APl as mean +- sample std over seeds, the AP gain over the plain
   student (paired by seed), seconds per training iteration and its ratio to the plain student's.

Method specs (``--methods``, comma-separated, or ``--methods`` given several times)::

    [LABEL=]BASE[@KEY=VALUE[@KEY=VALUE...]]

``BASE`` is ``plain`` (no distiller), a registered distiller (``PGD``), a combination of them
(``FitNet+LogitKD``; names match case-insensitively) or a yacs file (``*.yaml``) whose ``MODEL.KD``
settings (all but ``MODEL.KD.TEACHER``) go on top of the student config. Each ``@KEY=VALUE``
overrides any config key for this method only. ``LABEL`` names the row and the run folder; it
defaults to the whole spec. Commas inside brackets or quotes do not split specs:
``FitNet@MODEL.KD.FITNET.IN_FEATURES=['p3','p4']``. The plain student always runs first and is
the reference of the gain and cost columns. Distillers take their default settings unless the
spec (an override or a file) sets them.

Trailing ``KEY VALUE`` pairs override every student run; ``--teacher-opts`` (a quoted string of
``KEY VALUE`` pairs, repeatable) overrides the teacher's config. ``--inherit`` sets
``MODEL.KD.INIT_STUDENT_FROM_TEACHER`` for every student, the plain one included, so all rows
share one initialisation. The number of classes of every detector head (``MODEL.*.NUM_CLASSES``)
is set from the training dataset's metadata.

Resuming: every finished run writes ``result.json`` atomically, keyed by a hash of its resolved
config (teacher checkpoint included, output folder excluded). A rerun with the same arguments
skips finished runs and trains the missing ones; a run whose config changed is retrained;
``--retrain`` retrains all students and ``--force-teacher`` the teacher. ``--skip-timing-iters``
is not part of the key: it applies to the runs trained after it changed. A failed run is
reported and the others go on; the exit status is then 1.

Timing: a run's s/iter is the mean wall time of a training iteration (batch loading, forward,
backward, optimizer step; no hook, no evaluation) after its first ``--skip-timing-iters``
iterations. It is measured on this machine, under whatever else runs on it: compare the cost
column within one table only.
"""
import argparse
import hashlib
import logging
import os
import re
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import kd_det2  # noqa: F401  (registers everything)
from kd_det2.config import get_kd_cfg
from kd_det2.data import prepare_dataset
from kd_det2.engine import results
from kd_det2.engine.runs import (
    cached_record,
    config_sha1,
    evaluate,
    file_sha1,
    set_max_iter,
    train_and_record,
    write_json_atomic,
)
from kd_det2.modeling.distillers import registered_distillers
from kd_det2.modeling.teacher import resolve_config_file

logger = logging.getLogger("kd_det2.benchmark_methods")

PLAIN = "plain"
RECORD = "result.json"
ERROR = "error.txt"
#: MODEL.* nodes whose NUM_CLASSES is not the number of box classes
_NOT_BOX_CLASSES = ("KD", "SEM_SEG_HEAD")


# ------------------------------------------------------------------------------ method specs
@dataclass(frozen=True)
class Method:
    """One row of the benchmark: a parsed method spec."""

    spec: str
    label: str
    distillers: Tuple[str, ...] = ()
    file: str = ""
    overrides: Tuple[Tuple[str, str], ...] = ()

    @property
    def is_baseline(self) -> bool:
        """The plain student with no override: the reference row."""
        return not (self.distillers or self.file or self.overrides)


def split_specs(text: str) -> List[str]:
    """Split ``text`` on the commas that are outside brackets and quotes."""
    parts, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_method(spec: str, registered: Sequence[str]) -> Method:
    """Parse ``[LABEL=]BASE[@KEY=VALUE...]`` (see the module docstring).

    Raises:
        ValueError: empty parts, an override without ``=``, a missing file, an unknown or
            repeated distiller name (the message lists the registered ones).
    """
    spec = spec.strip()
    head, *items = spec.split("@")
    label = ""
    if "=" in head:
        label, head = (x.strip() for x in head.split("=", 1))
        if not label:
            raise ValueError(f"Method '{spec}': empty label before '='.")
    head = head.strip()
    overrides = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Method '{spec}': override '@{item}' is not of the form @KEY=VALUE.")
        overrides.append((key.strip(), value.strip()))
    if not head:
        raise ValueError(f"Method '{spec}': no method before the overrides.")
    names: Tuple[str, ...] = ()
    file = ""
    if head.lower().endswith((".yaml", ".yml")):
        if not os.path.isfile(head):
            raise ValueError(f"Method '{spec}': config file '{head}' does not exist.")
        file = head
    elif head.lower() != PLAIN:
        by_lower = {n.lower(): n for n in registered}
        resolved = []
        for part in (p.strip() for p in head.split("+")):
            name = part if part in registered else by_lower.get(part.lower())
            if name is None:
                raise ValueError(
                    f"Method '{spec}': unknown distiller '{part}'. Registered distillers: "
                    f"{list(registered)}; a method is also '{PLAIN}' or a .yaml file."
                )
            resolved.append(name)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"Method '{spec}' names a distiller twice.")
        names = tuple(resolved)
    return Method(
        spec=spec, label=label or spec, distillers=names, file=file, overrides=tuple(overrides)
    )


def parse_methods(values: Sequence[str], registered: Sequence[str]) -> List[Method]:
    """All methods of ``--methods`` (each value split on top-level commas), the plain student
    first (added when not given); labels and their folder names must be unique."""
    methods = [parse_method(s, registered) for v in values for s in split_specs(v)]
    baselines = [m for m in methods if m.is_baseline]
    if len(baselines) > 1:
        raise ValueError(f"The plain student is given {len(baselines)} times: {baselines}.")
    plain = baselines[0] if baselines else Method(spec=PLAIN, label=PLAIN)
    methods = [plain] + [m for m in methods if not m.is_baseline]
    seen: Dict[str, str] = {}
    for m in methods:
        folder = run_folder(m.label)
        if folder in seen:
            raise ValueError(
                f"Methods '{seen[folder]}' and '{m.label}' have the same label or run folder "
                f"'{folder}': give one a label (LABEL=SPEC)."
            )
        seen[folder] = m.label
    return methods


def run_folder(label: str) -> str:
    """A file-system-safe folder name for a label (long ones end with a hash of the label)."""
    name = re.sub(r"[^A-Za-z0-9._+=@,-]", "_", label)
    if len(name) > 80:
        name = name[:60] + "-" + hashlib.sha1(label.encode()).hexdigest()[:10]
    return "_" + name if set(name) <= {"."} else name


# ------------------------------------------------------------------------------ configs
def load_yacs(path: str) -> CfgNode:
    cfg = get_kd_cfg()
    cfg.merge_from_file(path)
    return cfg


def _merge(cfg: CfgNode, opts: List[str], what: str) -> None:
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise SystemExit(f"Bad KEY VALUE pairs in {what} {list(opts)}: {e}") from e


def dataset_classes(name: str) -> Optional[int]:
    """Number of ``thing_classes`` of a registered dataset (loads it when only loading sets
    them, as for COCO json files), or None when it has none."""
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:
        DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
    return len(classes) if classes else None


def prepare_data(train: Sequence[str], test: str) -> Optional[int]:
    """Prepare and check the datasets; returns their number of classes (None: unknown)."""
    for name in list(train) + [test]:
        prepare_dataset(name)
        if name not in DatasetCatalog.list():
            raise SystemExit(
                f"Dataset '{name}' is not registered in detectron2's DatasetCatalog. Register it "
                "(e.g. detectron2.data.datasets.register_coco_instances) before running."
            )
    counts = {name: dataset_classes(name) for name in list(train) + [test]}
    known = {n for n in counts.values() if n is not None}
    if len(known) > 1:
        raise SystemExit(f"The datasets have different numbers of classes: {counts}.")
    return known.pop() if known else None


def apply_data(cfg: CfgNode, train: Sequence[str], test: str, classes: Optional[int]) -> None:
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TEST = (test,)
    if classes is None:
        return
    for name, node in cfg.MODEL.items():
        if isinstance(node, CfgNode) and "NUM_CLASSES" in node and name not in _NOT_BOX_CLASSES:
            node.NUM_CLASSES = classes


def teacher_config(args, train, test, classes) -> CfgNode:
    """The teacher's resolved config (datasets, --teacher-opts, --teacher-iters)."""
    if args.teacher_config.endswith(".py"):
        raise SystemExit("--teacher-config must be a yacs config (.yaml or model_zoo name).")
    cfg = load_yacs(resolve_config_file(args.teacher_config))
    if cfg.MODEL.META_ARCHITECTURE.startswith("KD"):
        raise SystemExit(
            f"--teacher-config {args.teacher_config} uses the KD wrapper "
            f"'{cfg.MODEL.META_ARCHITECTURE}': the teacher must be a plain detector config."
        )
    apply_data(cfg, train, test, classes)
    _merge(cfg, [x for opts in args.teacher_opts for x in shlex.split(opts)], "--teacher-opts")
    if args.teacher_iters:
        set_max_iter(cfg, args.teacher_iters)
    cfg.OUTPUT_DIR = os.path.join(args.output, "teacher")
    return cfg


def uses_teacher(cfg: CfgNode) -> bool:
    return bool(cfg.MODEL.KD.DISTILLERS) or bool(cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER)


def merge_method_file(cfg: CfgNode, path: str) -> None:
    """Put the ``MODEL.KD`` settings of a yacs file (with its bases) on top of ``cfg``; its
    ``MODEL.KD.TEACHER`` is ignored (the benchmark's teacher is used)."""
    kd = dict(CfgNode.load_yaml_with_base(path, allow_unsafe=True).get("MODEL", {}).get("KD", {}))
    kd.pop("TEACHER", None)
    arch = kd.get("STUDENT_META_ARCHITECTURE", cfg.MODEL.KD.STUDENT_META_ARCHITECTURE)
    if arch != cfg.MODEL.KD.STUDENT_META_ARCHITECTURE:
        raise ValueError(
            f"Method file {path} is for a {arch} student, the student config for a "
            f"{cfg.MODEL.KD.STUDENT_META_ARCHITECTURE}."
        )
    cfg.merge_from_other_cfg(CfgNode({"MODEL": {"KD": kd}}))


def student_config(args, method: Method, seed: int, data, teacher_file: str, weights: str):
    """The resolved config of one run."""
    cfg = load_yacs(args.student_config)
    apply_data(cfg, *data)
    _merge(cfg, args.opts, "the student overrides")
    if args.student_iters:
        set_max_iter(cfg, args.student_iters)
    try:
        if method.file:
            merge_method_file(cfg, method.file)
        else:
            cfg.MODEL.KD.DISTILLERS = list(method.distillers)
        if args.inherit:
            cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = True
        for key, value in method.overrides:
            cfg.merge_from_list([key, value])
    except (KeyError, ValueError, AssertionError) as e:
        raise SystemExit(f"Method '{method.label}': {e}") from e
    teacher = cfg.MODEL.KD.TEACHER
    teacher.CONFIG_FILE, teacher.WEIGHTS, teacher.OPTS = "", "", []
    if uses_teacher(cfg):
        teacher.CONFIG_FILE, teacher.WEIGHTS, teacher.REQUIRE_WEIGHTS = teacher_file, weights, True
    cfg.SEED = int(seed)
    cfg.OUTPUT_DIR = os.path.join(args.output, "runs", run_folder(method.label), f"seed{seed}")
    return cfg


def check_student(cfg: CfgNode, path: str) -> None:
    kd = cfg.MODEL.KD
    if not cfg.MODEL.META_ARCHITECTURE.startswith("KD"):
        raise SystemExit(
            f"--student-config {path} is not a KD-wrapper config (META_ARCHITECTURE "
            f"'{cfg.MODEL.META_ARCHITECTURE}'): use e.g. KDDenseDetector with "
            "MODEL.KD.STUDENT_META_ARCHITECTURE set to the detector."
        )
    if kd.DISTILLERS:
        raise SystemExit(
            f"--student-config {path} distils with {list(kd.DISTILLERS)}: give the plain "
            "student's config (MODEL.KD.DISTILLERS []) and this file as a method."
        )


def validate(cfg: CfgNode, label: str) -> None:
    """Build the run's model with a random teacher, so that a method that cannot work with this
    student or teacher fails before any training."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.KD.TEACHER.WEIGHTS = ""
    cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = False
    try:
        model = build_model(cfg)
    except Exception as e:
        raise SystemExit(f"Method '{label}' cannot be built: {type(e).__name__}: {e}") from e
    del model


def run_key(cfg: CfgNode, teacher_id: str) -> str:
    """Key of a run: its config without OUTPUT_DIR, the teacher named by ``teacher_id``."""
    cfg = cfg.clone()
    cfg.defrost()
    if uses_teacher(cfg):
        cfg.MODEL.KD.TEACHER.CONFIG_FILE = ""
        cfg.MODEL.KD.TEACHER.WEIGHTS = f"sha1:{teacher_id}"
    return config_sha1(cfg, drop=("OUTPUT_DIR",))


# ------------------------------------------------------------------------------ teacher
def prepare_teacher(args, cfg: CfgNode, make: bool = True) -> Optional[Tuple[dict, str]]:
    """The teacher's (record, id): reused when its record matches its config (and checkpoint),
    otherwise trained (or, with --teacher-weights, evaluated), or None when ``make`` is False.
    The id changes with the teacher's config and checkpoint bytes."""
    key = config_sha1(cfg, drop=("MODEL.KD", "OUTPUT_DIR"))
    if args.teacher_weights:
        weights = args.teacher_weights
        local = "://" not in weights
        if local and not os.path.isfile(weights):
            raise SystemExit(f"--teacher-weights {weights} does not exist.")
        key = hashlib.sha1(f"{key}:{file_sha1(weights) if local else weights}".encode()).hexdigest()
        path = os.path.join(cfg.OUTPUT_DIR, "teacher_eval.json")
        record = cached_record(path, key)
        if record is None and make:
            logger.info(f"[teacher] evaluating {weights}")
            model = build_model(cfg)
            DetectionCheckpointer(model).load(weights)
            record = {"config_sha1": key, "metrics": evaluate(cfg, model), "weights": weights}
            write_json_atomic(path, record)
        return None if record is None else (record, key)
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    path = os.path.join(cfg.OUTPUT_DIR, "teacher.json")
    record = None if args.force_teacher else cached_record(path, key, needs=[weights])
    if record is None:
        if not make:
            return None
        logger.info(f"[teacher] training {args.teacher_config} ({cfg.SOLVER.MAX_ITER} iterations)")
        record = train_and_record(cfg, path, key, args.skip_timing_iters)
    else:
        logger.info("[teacher] checkpoint and config unchanged: reusing the trained teacher")
    return record, hashlib.sha1(f"{key}:{file_sha1(weights)}".encode()).hexdigest()


# ------------------------------------------------------------------------------ results
def write_results(args, plan: "Plan", records, teacher: dict) -> Tuple[str, bool]:
    """Write results.md, results.csv and results.png; returns (Markdown text, whether the
    teacher is above the plain student)."""
    rows, notes = results.summarize(plan.methods, plan.seeds, records, teacher)
    devices = sorted({r["device"] for r in records.values() if r.get("device")})
    skips = sorted({r["step_seconds"].get("skipped", 0) for r in records.values()})
    skip = "/".join(map(str, skips)) or str(args.skip_timing_iters)
    text = results.render_markdown(rows, notes, plan.seeds, plan.test, devices, skip)
    _write_if_changed(os.path.join(args.output, "results.md"), text)
    results.write_csv(os.path.join(args.output, "results.csv"), rows, plan.seeds)
    name = os.path.splitext(os.path.basename(args.student_config))[0]
    results.plot_ap(
        os.path.join(args.output, "results.png"), rows, plan.seeds, f"{name} on {plan.test}"
    )
    return text, rows[0]["method"] == "teacher"


# ------------------------------------------------------------------------------ main
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _write_if_changed(path: str, text: str) -> None:
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


@dataclass
class Plan:
    """Everything checked before training: methods, seeds, configs, datasets."""

    methods: List[Method]
    seeds: List[int]
    teacher: CfgNode
    runs: Dict[Tuple[str, int], CfgNode]  # (label, seed) -> resolved student config
    train: List[str]
    test: str

    def method(self, label: str) -> Method:
        return next(m for m in self.methods if m.label == label)


def make_plan(args) -> Plan:
    """Parse the arguments, prepare the datasets and resolve every config."""
    try:
        methods = parse_methods(args.methods, registered_distillers())
    except ValueError as e:
        raise SystemExit(str(e)) from e
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds}: give distinct integers, e.g. 0,1,2")
    args.output = os.path.abspath(args.output)
    student = load_yacs(args.student_config)
    check_student(student, args.student_config)
    train = split_specs(args.dataset_train) if args.dataset_train else list(student.DATASETS.TRAIN)
    tests = [args.dataset_test] if args.dataset_test else list(student.DATASETS.TEST)
    if len(tests) != 1 or not train:
        raise SystemExit(f"Give one test dataset and a training dataset (got {train}, {tests}).")
    data = (train, tests[0], prepare_data(train, tests[0]))
    t_cfg = teacher_config(args, *data)
    teacher_file = os.path.join(t_cfg.OUTPUT_DIR, "config.yaml")
    _write_if_changed(teacher_file, t_cfg.dump())
    weights = args.teacher_weights or os.path.join(t_cfg.OUTPUT_DIR, "model_final.pth")
    runs = {
        (m.label, s): student_config(args, m, s, data, teacher_file, weights)
        for s in seeds  # seed-major: a first full table comes early
        for m in methods
    }
    inherits = [c.MODEL.KD.INIT_STUDENT_FROM_TEACHER for c in runs.values()]
    if any(inherits) and not runs[(methods[0].label, seeds[0])].MODEL.KD.INIT_STUDENT_FROM_TEACHER:
        logger.warning(
            "Some methods inherit the teacher's weights but the plain student does not: pass "
            "--inherit to compare them from the same initialisation."
        )
    return Plan(methods, seeds, t_cfg, runs, train, tests[0])


def train_run(args, cfg: CfgNode, key: str, method: Method, seed: int) -> dict:
    """Train and evaluate one run; its folder gets config.yaml (the resolved config) and
    result.json (the record)."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    if os.path.exists(os.path.join(cfg.OUTPUT_DIR, ERROR)):
        os.remove(os.path.join(cfg.OUTPUT_DIR, ERROR))
    _write_if_changed(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    return train_and_record(
        cfg, os.path.join(cfg.OUTPUT_DIR, RECORD), key, args.skip_timing_iters,
        label=method.label, spec=method.spec, seed=seed, distillers=list(cfg.MODEL.KD.DISTILLERS),
        inherit=bool(cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER),
    )  # fmt: skip


def _eta(durations: List[float], left: int) -> str:
    if not durations:
        return ""
    mean = statistics.fmean(durations)
    return (
        f", ETA {_duration(mean * left)} ({_duration(mean)} per run, mean of "
        f"{len(durations)} finished)"
    )


def run(args) -> int:
    """Plan, train what is missing, tabulate; returns the exit status (1 when a run failed)."""
    plan = make_plan(args)
    validated = set()

    def check(labels):
        # one model per method with a random teacher: bad methods fail before any training
        for label in labels:
            if label not in validated:
                validate(plan.runs[(label, plan.seeds[0])], label)
                validated.add(label)

    for m in plan.methods:
        distillers = "+".join(plan.runs[(m.label, plan.seeds[0])].MODEL.KD.DISTILLERS) or "none"
        logger.info(f"method '{m.label}': distillers {distillers}")
    teacher = prepare_teacher(args, plan.teacher, make=False)
    if teacher is None or args.dry_run:
        check(m.label for m in plan.methods)
    if args.dry_run:
        for (label, seed), cfg in plan.runs.items():
            print(f"{label} seed {seed}: {cfg.OUTPUT_DIR}")
        return 0
    teacher, teacher_id = teacher or prepare_teacher(args, plan.teacher)
    logger.info(f"[teacher] AP {teacher['metrics']['AP']:.2f}")
    keys = {run: run_key(cfg, teacher_id) for run, cfg in plan.runs.items()}
    records: Dict[Tuple[str, int], dict] = {}
    for run, cfg in plan.runs.items():
        path = os.path.join(cfg.OUTPUT_DIR, RECORD)
        record = None if args.retrain else cached_record(path, keys[run])
        if record is not None:
            records[run] = record
    todo = [run for run in plan.runs if run not in records]
    check(label for label, _ in todo)
    logger.info(f"{len(records)} of {len(plan.runs)} runs finished earlier; {len(todo)} to train")
    durations = [r["wall_time"] for r in records.values() if r.get("wall_time")]
    failed = []
    for i, ((label, seed), cfg) in enumerate(plan.runs.items(), 1):
        where = f"[{i}/{len(plan.runs)}] {label} seed {seed}"
        if (label, seed) in records:
            logger.info(f"{where}: finished earlier with this config, skipped")
            continue
        left = len(todo) - todo.index((label, seed))
        logger.info(
            f"{where}: training ({left} of {len(todo)} runs still to train{_eta(durations, left)})"
        )
        start = time.perf_counter()
        try:
            record = train_run(args, cfg, keys[(label, seed)], plan.method(label), seed)
        except Exception:
            failed.append(f"{label} seed {seed}")
            logger.error(f"{where} failed:\n{traceback.format_exc()}")
            with open(os.path.join(cfg.OUTPUT_DIR, ERROR), "w") as f:
                f.write(traceback.format_exc())
            continue
        durations.append(time.perf_counter() - start)
        records[(label, seed)] = record
        logger.info(
            f"{where}: AP {record['metrics']['AP']:.2f} in {_duration(durations[-1])}, "
            f"{record['step_seconds']['mean']:.3f} s/iter"
        )
        write_results(args, plan, records, teacher)

    text, teacher_ok = write_results(args, plan, records, teacher)
    print(f"\n{text}", flush=True)
    print(f"Written: {os.path.join(args.output, 'results.md')}, results.csv, results.png")
    if not teacher_ok:
        logger.warning("=" * 20 + " THE TEACHER IS NOT BETTER THAN THE PLAIN STUDENT " + "=" * 20)
    if failed:
        logger.error(f"{len(failed)} runs failed: {failed} (see error.txt in their folders)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--student-config",
        required=True,
        help="plain student through the KD wrapper (MODEL.KD.DISTILLERS [])",
    )
    parser.add_argument("--teacher-config", required=True, help="plain detector yacs config")
    parser.add_argument(
        "--teacher-weights",
        default="",
        help="evaluate and use this checkpoint instead of training the teacher",
    )
    parser.add_argument(
        "--methods",
        action="append",
        default=[],
        required=True,
        help="comma-separated [LABEL=]BASE[@KEY=VALUE...] specs (see below)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--output", default=os.path.join("output", "benchmark_methods"))
    parser.add_argument(
        "--dataset-train",
        default="",
        help="registered dataset name(s), comma-separated (default: the student "
        "config's DATASETS.TRAIN); also used by the teacher",
    )
    parser.add_argument(
        "--dataset-test",
        default="",
        help="one registered dataset name (default: the student config's)",
    )
    parser.add_argument(
        "--student-iters",
        type=int,
        default=None,
        help="students' SOLVER.MAX_ITER (SOLVER.STEPS scaled with it)",
    )
    parser.add_argument(
        "--teacher-iters",
        type=int,
        default=None,
        help="teacher's SOLVER.MAX_ITER (SOLVER.STEPS scaled with it)",
    )
    parser.add_argument(
        "--inherit",
        action="store_true",
        help="MODEL.KD.INIT_STUDENT_FROM_TEACHER for every student, plain included",
    )
    parser.add_argument(
        "--teacher-opts",
        action="append",
        default=[],
        help='"KEY VALUE ..." overrides of the teacher config (repeatable)',
    )
    parser.add_argument(
        "--skip-timing-iters",
        type=int,
        default=5,
        help="first iterations of a run left out of its s/iter (default 5)",
    )
    parser.add_argument("--force-teacher", action="store_true", help="retrain the teacher")
    parser.add_argument("--retrain", action="store_true", help="retrain every student run")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the methods (build each model) and list the runs; no training",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides applied to every student run")  # fmt: skip
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="kd_det2")
    logging.getLogger("detectron2.engine.defaults").setLevel(logging.WARNING)  # model dumps
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
