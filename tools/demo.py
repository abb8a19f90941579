#!/usr/bin/env python
"""The kd_det2 demo (``make demo``): teacher, plain student and distilled student on kd_shapes.

For each detector family the ``--methods`` need (FCOS for pgd, fitnet, logit, rm, pfi, rm-pfi
and hgd*; GFL for the ld* methods and gfl-fitnet):

1. trains the teacher (cached: skipped when its checkpoint and config are unchanged),
2. trains the student on the same schedule and seed, plainly and with each distillation method
   of ``--methods`` (default: pgd),
3. evaluates them with COCOEvaluator on ``kd_shapes_val`` and prints one table.

Other data: ``DATASETS.TRAIN "('voc:<dir>:trainval',)" DATASETS.TEST "('voc:<dir>:test',)"`` (or
``coco:<file.json>`` names) as overrides; NUM_CLASSES then follows the training set's classes.

    python tools/demo.py [--methods pgd,fitnet,logit,rm,pfi,rm-pfi,ld,ld-main,ld-main-vlr,
                                    gfl-fitnet,hgd,hgd-...]
                         [--student-iters N] [--teacher-iters N] [--seed S] [--output DIR]
                         [--force-teacher] [KEY VALUE ...]
"""
import argparse
import logging
import os
import sys
import time
from typing import Dict, List, Optional

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
#: detector family -> (teacher config, plain-student config)
FAMILIES = {
    "FCOS": ("fcos_R_18_FPN128_teacher.yaml", "fcos_R_18_student.yaml"),
    "GFL": ("gfl_R_18_FPN128_teacher.yaml", "gfl_R_18_student.yaml"),
}
_NO_VLR = ["MODEL.KD.LD.LOSS_WEIGHT_VLR", "0.0"]
_NO_KD = ["MODEL.KD.LD.LOSS_WEIGHT_KD", "0.0"]


def _gkd(key: str, value: str) -> List[str]:
    return [f"MODEL.KD.GKD.{key}", value]


def _hgd(key: str, value: str) -> List[str]:
    return [f"MODEL.KD.HGD.{key}", value]


#: --methods name -> (family, distilled-student config, config overrides)
DISTILLED = {
    "pgd": ("FCOS", "fcos_R_18_pgd.yaml", []),
    "fitnet": ("FCOS", "fcos_R_18_fitnet.yaml", []),  # FitNet + soft-label logit KD
    "logit": ("FCOS", "fcos_R_18_logit.yaml", []),  # soft-label logit KD alone
    "rm": ("FCOS", "fcos_R_18_rm.yaml", []),  # rank mimicking (cls + centerness)
    "pfi": ("FCOS", "fcos_R_18_pfi.yaml", []),  # prediction-guided feature imitation
    "rm-pfi": ("FCOS", "fcos_R_18_rm_pfi.yaml", []),  # both: the paper's "KD-RP"
    "ld": ("GFL", "gfl_R_18_ld.yaml", []),  # main KD + main LD + VLR LD (the paper's "Ours")
    "ld-main": ("GFL", "gfl_R_18_ld.yaml", _NO_VLR + _NO_KD),
    "ld-main-vlr": ("GFL", "gfl_R_18_ld.yaml", _NO_KD),
    "gfl-fitnet": ("GFL", "gfl_R_18_fitnet.yaml", []),
    # HGD (our interpretation, docs/HGD.md): the full method, then one switch flipped per row
    "hgd": ("FCOS", "fcos_R_18_hgd.yaml", []),
    "hgd-no-micro": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("MICRO", "False")),
    "hgd-no-instance": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("INSTANCE_BALANCED", "False")),
    "hgd-no-focus": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("FOCUS_EXPONENT", "0.0")),
    "hgd-fixed-macro": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("MACRO", "fixed")),
    "hgd-no-norm": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("NORMALIZE", "False")),
    "hgd-neck": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("BACKBONE", "False")),
    "hgd-backbone": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("NECK", "False")),
    "hgd-cross": ("FCOS", "fcos_R_18_hgd.yaml", _hgd("CROSS_FORWARD", "True")),
    # GKD (docs/GKD.md): maps against the GT; the official code's pseudo-GT targets; its parity
    # mode (maps without gradient); with the BMFI terms
    "gkd": ("GFL", "gfl_R_18_gkd.yaml", []),
    "gkd-pseudo": ("GFL", "gfl_R_18_gkd.yaml", _gkd("CAM_TARGET", "pseudo")),
    "gkd-parity": ("GFL", "gfl_R_18_gkd.yaml", _gkd("DIFFERENTIABLE", "False")),
    "gkd-bmfi": ("GFL", "gfl_R_18_gkd_bmfi.yaml", []),
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
    if cfg.MODEL.KD.DISTILLERS:
        cfg.MODEL.KD.TEACHER.OPTS = list(cfg.MODEL.KD.TEACHER.OPTS) + [key, str(len(classes))]


def backbone_name(cfg) -> str:
    return f"R{cfg.MODEL.RESNETS.DEPTH}-FPN{cfg.MODEL.FPN.OUT_CHANNELS}"


def teacher_key(cfg) -> str:
    """Key of a teacher config: its dump without ``MODEL.KD`` (distillation settings, unused by
    a plain teacher), so that new distiller keys do not invalidate the cached teacher."""
    return config_sha1(cfg, drop=("MODEL.KD",))


def run(args) -> List[dict]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DISTILLED]
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {sorted(DISTILLED)}")
    families = [f for f in FAMILIES if any(DISTILLED[m][0] == f for m in methods)]
    steps = 2 * len(families) + len(methods)
    rows, step = [], 0
    for family in families:
        teacher_name, student_name = FAMILIES[family]
        step += 1
        teacher_cfg, record = _teacher(args, teacher_name, family, f"[{step}/{steps}]")
        rows.append(_row("teacher", teacher_cfg, record["metrics"], record["train_time"]))
        teacher_weights = os.path.join(teacher_cfg.OUTPUT_DIR, "model_final.pth")
        runs = [("student", student_name, [], "student")]
        runs += [
            (m, DISTILLED[m][1], DISTILLED[m][2], f"student_{m}")
            for m in methods
            if DISTILLED[m][0] == family
        ]
        for method, name, extra, out in runs:
            step += 1
            seed = ["SEED", str(args.seed)]  # the students' seed; the teacher keeps its config's
            cfg = load_cfg(name, args.opts + seed + extra + _out(args, out), args.student_iters)
            label = "student"
            if cfg.MODEL.KD.DISTILLERS:
                cfg.MODEL.KD.TEACHER.WEIGHTS = teacher_weights
                label = f"student + {method}"
            logger.info(f"[{step}/{steps}] training {family} {label} ({backbone_name(cfg)})")
            result = train_and_evaluate(cfg)
            rows.append(_row(label, cfg, result["metrics"], result["train_time"]))
    return rows


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


def _row(label: str, cfg, metrics: Dict[str, float], seconds: float) -> dict:
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch.startswith("KD"):
        arch = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    row = {"detector": arch, "model": label, "backbone": backbone_name(cfg)}
    row.update({k: round(metrics[k], 2) for k in METRICS})
    row["train time"] = f"{seconds:.0f} s ({cfg.SOLVER.MAX_ITER} it)"
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods", default="pgd", help=f"comma-separated KD methods from {sorted(DISTILLED)}"
    )
    parser.add_argument("--teacher-iters", type=int, default=None, help="teacher MAX_ITER")
    parser.add_argument("--student-iters", type=int, default=None, help="student MAX_ITER")
    parser.add_argument("--seed", type=int, default=0, help="seed of the student runs")
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
    rows = run(args)
    table = tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".2f")
    total = time.perf_counter() - start
    test_sets = ", ".join(load_cfg(FAMILIES["FCOS"][1], args.opts).DATASETS.TEST)
    print(f"\nkd_det2 demo on {test_sets} (COCO bbox metrics, %)\n", flush=True)
    print(table)
    print(f"\ntotal wall time {total:.0f} s", flush=True)
    out_dir = args.output or os.path.join("output", "demo")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + f"\n\ntotal wall time {total:.0f} s\n")


if __name__ == "__main__":
    sys.exit(main())
