"""tools/demo.py: detector families, teacher caching and the table (tiny runs on CPU)."""

import os
import subprocess
import sys

from conftest import write_voc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "DATASETS.TRAIN", "('kd_shapes_mini_train',)",
    "DATASETS.TEST", "('kd_shapes_mini_val',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
]  # fmt: skip


def _demo(tmp, methods):
    env = dict(os.environ, KD_DET2_DATASETS=os.path.join(tmp, "datasets"), OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.join("tools", "demo.py"), "--methods", methods]
    cmd += ["--output", os.path.join(tmp, "out"), "--teacher-iters", "2", "--student-iters", "2"]
    proc = subprocess.run(
        cmd + TINY, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def test_demo_ld_trains_the_gfl_family_and_caches_its_teacher(tmp_path):
    out = _demo(str(tmp_path), "ld")
    assert "training the GFL teacher" in out and "FCOS teacher" not in out
    table = open(os.path.join(tmp_path, "out", "results.md")).read()
    rows = [line for line in table.splitlines() if line.startswith("| GFL")]
    assert [r.split("|")[2].strip() for r in rows] == ["teacher", "student", "student + ld"]
    assert os.path.isfile(os.path.join(tmp_path, "out", "teacher_gfl", "model_final.pth"))
    again = _demo(str(tmp_path), "ld-main")
    assert "GFL teacher checkpoint and config unchanged" in again


def _demo_module():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import demo
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    return demo


def test_every_demo_method_distils_a_student_of_its_family():
    demo = _demo_module()
    for method, (family, name, extra) in demo.DISTILLED.items():
        cfg = demo.load_cfg(name, extra + ["DATASETS.TRAIN", "()"])
        assert cfg.MODEL.KD.STUDENT_META_ARCHITECTURE == family, method
        assert cfg.MODEL.KD.DISTILLERS, method
        teacher = os.path.basename(cfg.MODEL.KD.TEACHER.CONFIG_FILE)
        assert teacher == demo.FAMILIES[family][0], method
    assert demo.DISTILLED["rm-pfi"][1] == "fcos_R_18_rm_pfi.yaml"


def test_demo_fits_num_classes_to_the_training_set(tmp_path):
    demo = _demo_module()
    objects = [("x", 1, 1, 20, 20), ("y", 5, 5, 30, 30)]
    root = write_voc(tmp_path, {"a": (64, 48, objects)}, {"train": ["a"]})
    cfg = demo.load_cfg("fcos_R_18_pgd.yaml", ["DATASETS.TRAIN", f"('voc:{root}:train',)"])
    assert cfg.MODEL.FCOS.NUM_CLASSES == 2
    assert list(cfg.MODEL.KD.TEACHER.OPTS)[-2:] == ["MODEL.FCOS.NUM_CLASSES", "2"]


#: demo row -> what its override changes in the built HGD distiller
HGD_ROWS = {
    "hgd": lambda d: [p.student for p in d.pairs]
    == ["res2", "res3", "res4", "res5", "p3", "p4", "p5", "p6", "p7"],
    "hgd-no-micro": lambda d: not d._micro["enabled"],
    "hgd-no-instance": lambda d: not d._micro["instance_balanced"],
    "hgd-no-focus": lambda d: d._micro["focus_exponent"] == 0,
    "hgd-fixed-macro": lambda d: d.macro == "fixed",
    "hgd-no-norm": lambda d: not d.normalize,
    "hgd-neck": lambda d: {p.group for p in d.pairs} == {"neck"},
    "hgd-backbone": lambda d: {p.group for p in d.pairs} == {"backbone"},
    "hgd-cross": lambda d: [c.name for c in d.cross_terms]
    == ["res2>res3", "res3>res4", "res4>res5"],
}


def test_demo_hgd_rows_build_with_their_switch(monkeypatch):
    from detectron2.modeling import build_model

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import demo
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    monkeypatch.chdir(ROOT)
    assert sorted(HGD_ROWS) == sorted(m for m in demo.DISTILLED if m.startswith("hgd"))
    for method, check in HGD_ROWS.items():
        family, name, overrides = demo.DISTILLED[method]
        opts = ["DATASETS.TRAIN", "()", "MODEL.KD.TEACHER.REQUIRE_WEIGHTS", "False"] + overrides
        cfg = demo.load_cfg(name, opts)
        cfg.MODEL.KD.TEACHER.WEIGHTS = ""
        assert family == "FCOS" and check(build_model(cfg).distillers["HGD"]), method


#: demo row -> what its override changes in the built GKD distiller
GKD_ROWS = {
    "gkd": lambda d: d.cam_target == "gt" and d.differentiable and not d.bmfi_weights,
    "gkd-pseudo": lambda d: d.cam_target == "pseudo",
    "gkd-parity": lambda d: not d.differentiable,
    "gkd-bmfi": lambda d: d.bmfi_weights == {"fg": 1e-3, "att": 5e-4, "global": 5e-6},
}


def test_demo_gkd_rows_build_with_their_switch(monkeypatch):
    from detectron2.modeling import build_model

    demo = _demo_module()
    monkeypatch.chdir(ROOT)
    assert sorted(GKD_ROWS) == sorted(m for m in demo.DISTILLED if m.startswith("gkd"))
    for method, check in GKD_ROWS.items():
        family, name, overrides = demo.DISTILLED[method]
        opts = ["DATASETS.TRAIN", "()", "MODEL.KD.TEACHER.REQUIRE_WEIGHTS", "False"] + overrides
        cfg = demo.load_cfg(name, opts)
        cfg.MODEL.KD.TEACHER.WEIGHTS = ""
        distiller = build_model(cfg).distillers["GKD"]
        assert family == "GFL" and distiller.levels == ["p3", "p4", "p5", "p6", "p7"], method
        assert check(distiller), method
