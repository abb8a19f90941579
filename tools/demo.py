#!/usr/bin/env python
"""The kd_det2 demo (``make demo``): teacher, plain students and distilled students on kd_shapes.

For each detector family the ``--methods`` need (FCOS for no-inherit, pgd, fitnet, logit, rm,
pfi, rm-pfi and hgd*; GFL for the ld* methods, gfl-fitnet and gkd*; Faster R-CNN for rcnn-gkd):

1. trains the teacher (cached: skipped when its checkpoint and config are unchanged),
2. trains, for each seed of ``--seeds``, the plain student (neck and head inherited from the
   teacher, as every distilled student) and the student with each method of ``--methods``
   (default: ``no-inherit,pgd``; ``no-inherit`` is the plain student without inheritance),
3. evaluates them with COCOEvaluator on ``kd_shapes_val`` and prints one table (mean +- sample
   std over the seeds when there are several); it warns loudly when a teacher is not better
   than its plain student, since the comparison then says nothing about distillation.

Other data: ``DATASETS.TRAIN "('voc:<dir>:trainval',)" DATASETS.TEST "('voc:<dir>:test',)"`` (or
``coco:<file.json>`` names) as overrides; NUM_CLASSES then follows the training set's classes.

    python tools/demo.py [--methods no-inherit,pgd,fitnet,logit,rm,pfi,rm-pfi,ld,ld-main,
                                    ld-main-vlr,gfl-fitnet,hgd,hgd-...,gkd,gkd-...,rcnn-gkd]
                         [--student-iters N] [--teacher-iters N] [--seeds 0,1,2] [--output DIR]
                         [--force-teacher] [KEY VALUE ...]
"""
import argparse
import logging
import os
import statistics
import sys
import time
from typing import List, Optional, Tuple

from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

import kd_det2  # noqa: F401  (registers everything)
from kd_det2.config import get_kd_cfg
from kd_det2.data import prepare_dataset
from kd_det2.engine import num_classes_setting
from kd_det2.engine.runs import (
    METRICS,
    cached_record,
    config_sha1,
    set_max_iter,
    train_and_evaluate,
    train_and_record,
)

logger = logging.getLogger("kd_det2.demo")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO, "projects", "demo")
#: detector family (the student's meta-architecture) -> (teacher config, plain-student config)
FAMILIES = {
    "FCOS": ("fcos_teacher.yaml", "fcos_student.yaml"),
    "GFL": ("gfl_teacher.yaml", "gfl_student.yaml"),
    "GeneralizedRCNN": ("rcnn_teacher.yaml", "rcnn_student.yaml"),  # Faster R-CNN
}
#: the plain student without the teacher's neck and head (ImageNet backbone only)
NO_INHERIT = "no-inherit"
_NO_VLR = ["MODEL.KD.LD.LOSS_WEIGHT_VLR", "0.0"]
_NO_KD = ["MODEL.KD.LD.LOSS_WEIGHT_KD", "0.0"]


def _gkd(key: str, value: str) -> List[str]:
    return [f"MODEL.KD.GKD.{key}", value]


def _hgd(key: str, value: str) -> List[str]:
    return [f"MODEL.KD.HGD.{key}", value]


#: --methods name -> (family, student config, config overrides)
DISTILLED = {
    NO_INHERIT: ("FCOS", "fcos_student.yaml", ["MODEL.KD.INIT_STUDENT_FROM_TEACHER", "False"]),
    "pgd": ("FCOS", "fcos_pgd.yaml", []),
    "fitnet": ("FCOS", "fcos_fitnet.yaml", []),  # FitNet + soft-label logit KD
    "logit": ("FCOS", "fcos_logit.yaml", []),  # soft-label logit KD alone
    "rm": ("FCOS", "fcos_rm.yaml", []),  # rank mimicking (cls + centerness)
    "pfi": ("FCOS", "fcos_pfi.yaml", []),  # prediction-guided feature imitation
    "rm-pfi": ("FCOS", "fcos_rm_pfi.yaml", []),  # both: the paper's "KD-RP"
    "ld": ("GFL", "gfl_ld.yaml", []),  # main KD + main LD + VLR LD (the paper's "Ours")
    "ld-main": ("GFL", "gfl_ld.yaml", _NO_VLR + _NO_KD),
    "ld-main-vlr": ("GFL", "gfl_ld.yaml", _NO_KD),
    "gfl-fitnet": ("GFL", "gfl_fitnet.yaml", []),
    # HGD (our interpretation, docs/HGD.md): the full method, then one switch flipped per row
    "hgd": ("FCOS", "fcos_hgd.yaml", []),
    "hgd-no-micro": ("FCOS", "fcos_hgd.yaml", _hgd("MICRO", "False")),
    "hgd-no-instance": ("FCOS", "fcos_hgd.yaml", _hgd("INSTANCE_BALANCED", "False")),
    "hgd-no-focus": ("FCOS", "fcos_hgd.yaml", _hgd("FOCUS_EXPONENT", "0.0")),
    "hgd-fixed-macro": ("FCOS", "fcos_hgd.yaml", _hgd("MACRO", "fixed")),
    "hgd-no-norm": ("FCOS", "fcos_hgd.yaml", _hgd("NORMALIZE", "False")),
    "hgd-neck": ("FCOS", "fcos_hgd.yaml", _hgd("BACKBONE", "False")),
    "hgd-backbone": ("FCOS", "fcos_hgd.yaml", _hgd("NECK", "False")),
    "hgd-cross": ("FCOS", "fcos_hgd.yaml", _hgd("CROSS_FORWARD", "True")),
    # GKD (docs/GKD.md): maps against the GT; the official code's pseudo-GT targets; its parity
    # mode (maps without gradient); with the BMFI terms
    "gkd": ("GFL", "gfl_gkd.yaml", []),
    "gkd-pseudo": ("GFL", "gfl_gkd.yaml", _gkd("CAM_TARGET", "pseudo")),
    "gkd-parity": ("GFL", "gfl_gkd.yaml", _gkd("DIFFERENTIABLE", "False")),
    "gkd-bmfi": ("GFL", "gfl_gkd_bmfi.yaml", []),
    # two-stage GKD: Faster R-CNN, RPN + RoI-head losses on the student's samples
    "rcnn-gkd": ("GeneralizedRCNN", "rcnn_gkd.yaml", []),
}


def load_cfg(name: str, opts: List[str], iters: Optional[int] = None):
    """A demo config from projects/demo with overrides, fitted to its training set's classes,
    and, if given, ``iters`` iterations."""
    cfg = get_kd_cfg()
    cfg.merge_from_file(os.path.join(DEMO_DIR, name))
    cfg.merge_from_list(opts)
    fit_num_classes(cfg)
    if iters:
        set_max_iter(cfg, iters)
    return cfg


def fit_num_classes(cfg) -> None:
    """Set the detector's NUM_CLASSES (and the teacher's, through ``MODEL.KD.TEACHER.OPTS``) to
    the class count of ``DATASETS.TRAIN[0]``, so that the demo runs on any dataset name
    (``voc:<dir>:<split>``, ``coco:<file.json>``, ...) given on its command line."""
    setting = num_classes_setting(cfg)
    if setting is None or not cfg.DATASETS.TRAIN:
        return
    key, num_classes = setting
    name = cfg.DATASETS.TRAIN[0]
    prepare_dataset(name)
    classes = MetadataCatalog.get(name).get("thing_classes")
    if classes is None or len(classes) == num_classes:
        return
    logger.info(f"{key} set to {len(classes)}: the classes of {name}")
    cfg.merge_from_list([key, len(classes)])
    if uses_teacher(cfg):
        cfg.MODEL.KD.TEACHER.OPTS = list(cfg.MODEL.KD.TEACHER.OPTS) + [key, str(len(classes))]


def backbone_name(cfg) -> str:
    """Short name of a config's backbone and FPN width, e.g. "MobileNetV2-FPN64"."""
    name = cfg.MODEL.BACKBONE.NAME
    if "mobilenet_v2" in name:
        bottom_up = "MobileNetV2"
    elif "efficientnet_lite" in name:
        bottom_up = "EfficientNet-" + cfg.MODEL.EFFICIENTNET_LITE.VARIANT.capitalize()
    else:
        bottom_up = f"R{cfg.MODEL.RESNETS.DEPTH}"
    return f"{bottom_up}-FPN{cfg.MODEL.FPN.OUT_CHANNELS}"


def uses_teacher(cfg) -> bool:
    """Whether a student config builds the teacher (to distil, or to inherit from it)."""
    kd = cfg.MODEL.KD
    return bool(kd.DISTILLERS) or bool(kd.INIT_STUDENT_FROM_TEACHER)


def teacher_key(cfg) -> str:
    """Key of a teacher config: its dump without ``MODEL.KD`` (distillation settings, unused by
    a plain teacher), so that new distiller keys do not invalidate the cached teacher."""
    return config_sha1(cfg, drop=("MODEL.KD",))


def run(args) -> Tuple[List[dict], List[str]]:
    """Train and evaluate every run; returns the table rows and the warnings to print."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DISTILLED]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {sorted(DISTILLED)}")
    seeds = parse_seeds(args.seeds)
    families = [f for f in FAMILIES if any(DISTILLED[m][0] == f for m in methods)]
    steps = len(families) + (len(families) + len(methods)) * len(seeds)
    rows, warnings, step = [], [], 0
    for family in families:
        teacher_name, student_name = FAMILIES[family]
        step += 1
        teacher_cfg, record = _teacher(args, teacher_name, family, f"[{step}/{steps}]")
        teacher_row = _row("teacher", teacher_cfg, [record])
        rows.append(teacher_row)
        teacher_weights = os.path.join(teacher_cfg.OUTPUT_DIR, "model_final.pth")
        runs = [("student", student_name, [], "student")]
        runs += [
            (m, DISTILLED[m][1], DISTILLED[m][2], f"student_{m}")
            for m in methods
            if DISTILLED[m][0] == family
        ]
        for method, name, extra, out in runs:
            results = []
            for seed in seeds:  # the students' seeds; the teacher keeps its config's
                step += 1
                opts = args.opts + ["SEED", str(seed)] + extra + _out(args, out)
                cfg = load_cfg(name, opts, args.student_iters)
                if len(seeds) > 1:
                    cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, f"seed{seed}")
                if uses_teacher(cfg):
                    cfg.MODEL.KD.TEACHER.WEIGHTS = teacher_weights
                label = _label(method, cfg)
                what = f"{family} {label} ({backbone_name(cfg)}, seed {seed})"
                logger.info(f"[{step}/{steps}] training {what}")
                results.append(train_and_evaluate(cfg))
            rows.append(_row(label, cfg, results))
            if method == "student":
                warning = _weak_teacher(family, record["metrics"]["AP"], results)
                if warning:
                    logger.warning(warning)
                    warnings.append(warning)
    return rows, warnings


def parse_seeds(text: str) -> List[int]:
    """``"0,1,2"`` -> [0, 1, 2]; at least one seed, no repeats."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers, e.g. 0,1,2; got '{text}'")
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs at least one seed and no repeats; got '{text}'")
    return seeds


def _label(method: str, cfg) -> str:
    if method == "student":
        inherits = cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER
        return "student (neck + head from teacher)" if inherits else "student"
    if method == NO_INHERIT:
        return "student (ImageNet backbone only)"
    return f"student + {method}"


def _weak_teacher(family: str, teacher_ap: float, plain: List[dict]) -> Optional[str]:
    """A warning when the teacher is not better than its plain student (mean AP over seeds): the
    distilled rows then say nothing about distillation."""
    plain_ap = statistics.mean(r["metrics"]["AP"] for r in plain)
    if teacher_ap > plain_ap:
        return None
    return (
        f"!!! The {family} teacher ({teacher_ap:.2f} AP) is NOT better than its plain student "
        f"({plain_ap:.2f} AP): the distilled rows below say nothing about distillation. Train "
        "the teacher longer (--teacher-iters, --force-teacher) or check its config."
    )


def _teacher(args, name: str, family: str, step: str):
    """The teacher's config and record (metrics, train time), trained unless cached."""
    out = "teacher" if family == "FCOS" else f"teacher_{family.lower()}"
    cfg = load_cfg(name, args.opts + _out(args, out), args.teacher_iters)
    stamp = os.path.join(cfg.OUTPUT_DIR, "demo_teacher.json")
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    key = teacher_key(cfg)
    record = None if args.force_teacher else cached_record(stamp, key, needs=[weights])
    if record is None:
        logger.info(f"{step} training the {family} teacher ({backbone_name(cfg)})")
        record = train_and_record(cfg, stamp, key)
    else:
        logger.info(
            f"{step} {family} teacher checkpoint and config unchanged: using the cached one"
        )
    return cfg, record


def _out(args, name: str) -> List[str]:
    return ["OUTPUT_DIR", os.path.join(args.output, name)] if args.output else []


def _row(label: str, cfg, results: List[dict]) -> dict:
    """A table row: the metrics of one run, or their mean +- sample std over several seeds."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch.startswith("KD"):
        arch = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    row = {"detector": arch, "model": label, "backbone": backbone_name(cfg)}
    for k in METRICS:
        values = [r["metrics"][k] for r in results]
        if len(values) == 1:
            row[k] = round(values[0], 2)
        else:
            row[k] = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    seconds = statistics.mean(r["train_time"] for r in results)
    row["seeds"] = len(results)
    row["train time"] = f"{seconds:.0f} s ({cfg.SOLVER.MAX_ITER} it)"
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods",
        default=f"{NO_INHERIT},pgd",
        help=f"comma-separated rows from {sorted(DISTILLED)}",
    )
    parser.add_argument("--teacher-iters", type=int, default=None, help="teacher MAX_ITER")
    parser.add_argument("--student-iters", type=int, default=None, help="student MAX_ITER")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds of the student runs (default 0); with several, the table "
        "shows mean +- sample std",
    )
    parser.add_argument("--output", default=None, help="output root (default: configs' own)")
    parser.add_argument("--force-teacher", action="store_true", help="retrain the teacher")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides applied to every run"
    )
    args = parser.parse_args(argv)

    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="kd_det2")
    logging.getLogger("detectron2.engine.defaults").setLevel(logging.WARNING)  # model dumps
    start = time.perf_counter()
    rows, warnings = run(args)
    table = tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".2f")
    total = time.perf_counter() - start
    test_sets = ", ".join(load_cfg(FAMILIES["FCOS"][1], args.opts).DATASETS.TEST)
    seeds = parse_seeds(args.seeds)
    over = f"; students: mean ± std over seeds {args.seeds}" if len(seeds) > 1 else ""
    text = f"kd_det2 demo on {test_sets} (COCO bbox metrics, %{over})\n\n{table}\n"
    text += "".join(f"\n{w}\n" for w in warnings)
    text += f"\ntotal wall time {total:.0f} s\n"
    print("\n" + text, flush=True)
    out_dir = args.output or os.path.join("output", "demo")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
