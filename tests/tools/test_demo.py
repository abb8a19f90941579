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
    labels = [r.split("|")[2].strip() for r in rows]
    assert labels == ["teacher", "student (neck + head from teacher)", "student + ld"]
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
    """Every distilled row inherits neck and head from its family's teacher, as the plain
    student row does; the no-inherit row is the plain student without inheritance."""
    demo = _demo_module()
    for method, (family, name, extra) in demo.DISTILLED.items():
        cfg = demo.load_cfg(name, extra + ["DATASETS.TRAIN", "()"])
        assert cfg.MODEL.KD.STUDENT_META_ARCHITECTURE == family, method
        teacher = os.path.basename(cfg.MODEL.KD.TEACHER.CONFIG_FILE)
        assert teacher == demo.FAMILIES[family][0], method
        if method == demo.NO_INHERIT:
            assert not cfg.MODEL.KD.DISTILLERS and not cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER
        else:
            assert cfg.MODEL.KD.DISTILLERS and cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER, method
    for family, (_, student) in demo.FAMILIES.items():
        cfg = demo.load_cfg(student, ["DATASETS.TRAIN", "()"])
        assert cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER and not cfg.MODEL.KD.DISTILLERS, family
    assert demo.DISTILLED["rm-pfi"][1] == "fcos_rm_pfi.yaml"


def test_demo_teacher_and_student_differ_only_in_the_backbone():
    """The recipe the papers follow: same neck and head shapes, different bottom-up network."""
    demo = _demo_module()
    for family, (teacher_name, student_name) in demo.FAMILIES.items():
        teacher = demo.load_cfg(teacher_name, ["DATASETS.TRAIN", "()"])
        student = demo.load_cfg(student_name, ["DATASETS.TRAIN", "()"])
        assert teacher.MODEL.FPN.OUT_CHANNELS == student.MODEL.FPN.OUT_CHANNELS, family
        assert teacher.MODEL.FPN.IN_FEATURES == student.MODEL.FPN.IN_FEATURES, family
        if family == "GeneralizedRCNN":
            for node in ("ANCHOR_GENERATOR", "RPN", "ROI_HEADS", "ROI_BOX_HEAD"):
                assert teacher.MODEL[node] == student.MODEL[node], node
        else:
            node = family.upper()
            assert teacher.MODEL[node].NUM_CONVS == student.MODEL[node].NUM_CONVS, family
        assert "efficientnet_lite" in teacher.MODEL.BACKBONE.NAME, family
        assert "mobilenet_v2" in student.MODEL.BACKBONE.NAME, family
        assert demo.backbone_name(teacher) == "EfficientNet-Lite2-FPN64"
        assert demo.backbone_name(student) == "MobileNetV2-FPN64"


def test_demo_warns_when_the_teacher_is_not_better():
    demo = _demo_module()
    plain = [{"metrics": {"AP": 30.0}}, {"metrics": {"AP": 32.0}}]
    assert demo._weak_teacher("FCOS", 31.5, plain) is None
    warning = demo._weak_teacher("FCOS", 31.0, plain)
    assert "NOT better" in warning and "31.00" in warning and "31.00 AP" in warning
    assert demo.parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        try:
            demo.parse_seeds(bad)
        except SystemExit as e:
            assert "--seeds" in str(e)
        else:
            raise AssertionError(bad)


def test_demo_row_shows_mean_and_std_over_seeds():
    demo = _demo_module()
    cfg = demo.load_cfg("fcos_pgd.yaml", ["DATASETS.TRAIN", "()"])
    runs = [{"metrics": {k: v for k in demo.METRICS}, "train_time": 10.0 * v} for v in (1.0, 3.0)]
    row = demo._row("student + pgd", cfg, runs)
    assert row["AP"] == "2.00 ± 1.41" and row["seeds"] == 2 and row["train time"].startswith("20 s")
    assert demo._row("teacher", cfg, runs[:1])["AP"] == 1.0


def test_demo_fits_num_classes_to_the_training_set(tmp_path):
    demo = _demo_module()
    objects = [("x", 1, 1, 20, 20), ("y", 5, 5, 30, 30)]
    root = write_voc(tmp_path, {"a": (64, 48, objects)}, {"train": ["a"]})
    cfg = demo.load_cfg("fcos_pgd.yaml", ["DATASETS.TRAIN", f"('voc:{root}:train',)"])
    assert cfg.MODEL.FCOS.NUM_CLASSES == 2
    assert list(cfg.MODEL.KD.TEACHER.OPTS)[-2:] == ["MODEL.FCOS.NUM_CLASSES", "2"]


#: demo row -> what its override changes in the built HGD distiller
HGD_ROWS = {
    "hgd": lambda d: [p.student for p in d.pairs]
    == ["stage3", "stage4", "stage5", "p3", "p4", "p5", "p6", "p7"],
    "hgd-no-micro": lambda d: not d._micro["enabled"],
    "hgd-no-instance": lambda d: not d._micro["instance_balanced"],
    "hgd-no-focus": lambda d: d._micro["focus_exponent"] == 0,
    "hgd-fixed-macro": lambda d: d.macro == "fixed",
    "hgd-no-norm": lambda d: not d.normalize,
    "hgd-neck": lambda d: {p.group for p in d.pairs} == {"neck"},
    "hgd-backbone": lambda d: {p.group for p in d.pairs} == {"backbone"},
    "hgd-cross": lambda d: [c.name for c in d.cross_terms] == ["stage3>stage4", "stage4>stage5"],
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
        opts += ["MODEL.KD.INIT_STUDENT_FROM_TEACHER", "False"]
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


def test_demo_two_stage_gkd_row_builds(monkeypatch):
    """The rcnn-gkd row: Faster R-CNN student and teacher, maps on P2-P5, two-stage losses."""
    from detectron2.modeling import build_model

    demo = _demo_module()
    monkeypatch.chdir(ROOT)
    family, name, overrides = demo.DISTILLED["rcnn-gkd"]
    opts = ["DATASETS.TRAIN", "()", "MODEL.KD.TEACHER.REQUIRE_WEIGHTS", "False"] + overrides
    cfg = demo.load_cfg(name, opts)
    cfg.MODEL.KD.TEACHER.WEIGHTS = ""
    model = build_model(cfg)
    distiller = model.distillers["GKD"]
    assert family == "GeneralizedRCNN" and type(model).__name__ == "KDGeneralizedRCNN"
    assert distiller.levels == ["p2", "p3", "p4", "p5"] and distiller.two_stage
    assert distiller.beta == 0.01 and distiller.cam_target == "gt"
