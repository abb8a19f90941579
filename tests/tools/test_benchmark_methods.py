"""tools/benchmark_methods.py: method specs, the table over seeds, resuming (tiny runs on CPU)."""

import csv
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import benchmark_methods as bm  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "projects", "demo")
REGISTERED = ["FitNet", "LD", "LogitKD", "PGD"]
TINY = [
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.FCOS.NUM_CONVS", "1",
]  # fmt: skip


# ------------------------------------------------------------------------------ method specs
def test_parse_names_combinations_labels_and_overrides():
    m = bm.parse_method("pgd", REGISTERED)
    assert (m.label, m.distillers, m.overrides) == ("pgd", ("PGD",), ())
    m = bm.parse_method("FitNet+logitkd@MODEL.KD.FITNET.LOSS_WEIGHT=0.5", REGISTERED)
    assert m.distillers == ("FitNet", "LogitKD")
    assert m.overrides == (("MODEL.KD.FITNET.LOSS_WEIGHT", "0.5"),)
    assert m.label == "FitNet+logitkd@MODEL.KD.FITNET.LOSS_WEIGHT=0.5"
    m = bm.parse_method(" low = PGD@MODEL.KD.PGD.ALPHA=0.01@MODEL.KD.PGD.TOPK=9 ", REGISTERED)
    assert (m.label, m.distillers) == ("low", ("PGD",))
    assert m.overrides == (("MODEL.KD.PGD.ALPHA", "0.01"), ("MODEL.KD.PGD.TOPK", "9"))
    assert bm.parse_method("plain", REGISTERED).is_baseline
    assert not bm.parse_method("plain@SOLVER.BASE_LR=0.01", REGISTERED).is_baseline
    m = bm.parse_method(os.path.join(DEMO, "fcos_pgd.yaml"), REGISTERED)
    assert m.file.endswith("fcos_pgd.yaml") and m.distillers == ()


def test_split_keeps_commas_inside_brackets_and_quotes():
    specs = bm.split_specs("PGD, FitNet@MODEL.KD.FITNET.IN_FEATURES=['p3','p4'],x=LD@A.B='a,b'")
    assert specs == ["PGD", "FitNet@MODEL.KD.FITNET.IN_FEATURES=['p3','p4']", "x=LD@A.B='a,b'"]


def test_plain_comes_first_once_and_labels_are_unique():
    methods = bm.parse_methods(["PGD,FitNet", "LD"], REGISTERED)
    assert [m.label for m in methods] == ["plain", "PGD", "FitNet", "LD"]
    methods = bm.parse_methods(["PGD,base=plain"], REGISTERED)
    assert [m.label for m in methods] == ["base", "PGD"]
    with pytest.raises(ValueError, match="same label"):
        bm.parse_methods(["PGD,PGD"], REGISTERED)
    with pytest.raises(ValueError, match="plain student is given 2 times"):
        bm.parse_methods(["plain,b=plain"], REGISTERED)


@pytest.mark.parametrize(
    "spec,error",
    [
        ("PDG", r"unknown distiller 'PDG'. Registered distillers: \['FitNet', 'LD'"),
        ("FitNet+Nope", "unknown distiller 'Nope'"),
        ("PGD+pgd", "names a distiller twice"),
        ("PGD@MODEL.KD.PGD.ALPHA", "not of the form @KEY=VALUE"),
        ("=PGD", "empty label"),
        ("x=@A=1", "no method before"),
        ("no/such/method.yaml", "does not exist"),
    ],
)
def test_bad_specs_are_rejected(spec, error):
    with pytest.raises(ValueError, match=error):
        bm.parse_method(spec, REGISTERED)


def test_run_folders_are_safe_and_distinct():
    assert bm.run_folder("a/b c:d") == "a_b_c_d"
    assert bm.run_folder("..") == "_.."
    long = bm.run_folder("x" * 200)
    assert len(long) < 80 and long != bm.run_folder("x" * 201)


# ------------------------------------------------------------------------------ end to end
def _bench(out, methods, *extra):
    argv = [
        "--student-config", os.path.join(DEMO, "fcos_student.yaml"),
        "--teacher-config", os.path.join(DEMO, "fcos_teacher.yaml"),
        "--methods", methods, "--seeds", "0,1", "--output", str(out),
        "--dataset-train", "kd_shapes_mini_train", "--dataset-test", "kd_shapes_mini_val",
        "--student-iters", "1", "--teacher-iters", "1", "--skip-timing-iters", "1",
        "--teacher-opts", " ".join(TINY), *extra, *TINY,
    ]  # fmt: skip
    return bm.main(argv)


def _trained(out):
    """(label folder, seed folder) -> mtime of every run record."""
    runs = os.path.join(out, "runs")
    return {
        (label, seed): os.path.getmtime(os.path.join(runs, label, seed, "result.json"))
        for label in os.listdir(runs)
        for seed in os.listdir(os.path.join(runs, label))
    }


def test_table_over_seeds_resume_and_retrain_one_run(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    methods = "PGD,kd=FitNet+LogitKD@MODEL.KD.FITNET.LOSS_WEIGHT=0.5"
    assert _bench(out, methods, "--inherit") == 0
    labels = ["plain", "PGD", "kd"]
    for name in ("results.md", "results.csv", "results.png", "teacher/model_final.pth"):
        assert (out / name).is_file(), name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["role"] for r in rows] == ["teacher", "plain", "method", "method"]
    assert [r["method"] for r in rows[1:]] == labels
    assert rows[3]["distillers"] == "FitNet+LogitKD" and rows[1]["distillers"] == ""
    for r in rows[1:]:
        assert r["n_seeds"] == "2" and r["seeds"] == "0;1"
        per_seed = [float(x.split(":")[1]) for x in r["AP_per_seed"].split(";")]
        assert float(r["AP_mean"]) == pytest.approx(sum(per_seed) / 2, abs=1e-4)
        assert float(r["AP_std"]) == pytest.approx(
            abs(per_seed[0] - per_seed[1]) / 2**0.5, abs=1e-4
        )
        assert float(r["s_per_iter"]) > 0
    assert float(rows[1]["cost_vs_plain"]) == pytest.approx(1.0)
    record = json.loads((out / "runs" / "kd" / "seed1" / "result.json").read_text())
    assert record["seed"] == 1 and record["distillers"] == ["FitNet", "LogitKD"]
    assert record["iters"] == 1 and record["step_seconds"]["count"] == 1  # skip keeps one
    plain = json.loads((out / "runs" / "plain" / "seed0" / "result.json").read_text())
    assert plain["inherit"] and plain["distillers"] == []  # --inherit: the plain student too
    table = (out / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]][1:] == labels
    assert all(" ± " in line.split("|")[4] for line in lines[2:])  # AP: mean ± std
    assert "+" in lines[3].split("|")[10] or "-" in lines[3].split("|")[10]  # ΔAP, signed
    header = lines[0].split("|")
    assert len(header) == len(lines[2].split("|")) == len(lines[3].split("|"))

    # resume: nothing is trained again
    before = _trained(out)
    assert len(before) == 6
    monkeypatch.setattr(bm, "train_and_record", _must_not_train)
    assert _bench(out, methods, "--inherit") == 0
    assert _trained(out) == before
    monkeypatch.undo()

    # one deleted record: only that run is retrained; the teacher is reused
    os.remove(out / "runs" / "PGD" / "seed1" / "result.json")
    teacher = os.path.getmtime(out / "teacher" / "model_final.pth")
    assert _bench(out, methods, "--inherit") == 0
    after = _trained(out)
    assert [k for k in after if after[k] != before.get(k)] == [("PGD", "seed1")]
    assert os.path.getmtime(out / "teacher" / "model_final.pth") == teacher


def _must_not_train(*args, **kwargs):
    raise AssertionError("a finished run was retrained")


def test_changed_config_invalidates_the_record(tmp_path):
    cfg = bm.load_yacs(os.path.join(DEMO, "fcos_pgd.yaml"))
    key = bm.run_key(cfg, "teacher-a")
    moved = cfg.clone()
    moved.OUTPUT_DIR = "elsewhere"
    assert bm.run_key(moved, "teacher-a") == key  # the output folder is not part of the key
    changed = cfg.clone()
    changed.MODEL.KD.PGD.ALPHA = 0.5
    assert bm.run_key(changed, "teacher-a") != key
    assert bm.run_key(cfg, "teacher-b") != key  # a retrained teacher invalidates its students
    plain = bm.load_yacs(os.path.join(DEMO, "fcos_student.yaml"))
    assert plain.MODEL.KD.INIT_STUDENT_FROM_TEACHER  # inherits the teacher's neck and head
    assert bm.run_key(plain, "teacher-a") != bm.run_key(plain, "teacher-b")
    plain.MODEL.KD.INIT_STUDENT_FROM_TEACHER = False
    assert bm.run_key(plain, "teacher-a") == bm.run_key(plain, "teacher-b")


def test_bad_method_fails_before_training(tmp_path):
    # LD needs a GFL head: the FCOS student cannot be built with it
    with pytest.raises(SystemExit, match="Method 'LD' cannot be built"):
        _bench(tmp_path / "bench", "PGD,LD")
    assert not (tmp_path / "bench" / "teacher" / "model_final.pth").exists()
    assert not (tmp_path / "bench" / "runs").exists()
    with pytest.raises(SystemExit, match="unknown distiller 'Nope'"):
        _bench(tmp_path / "bench", "PGD,Nope")


def test_dry_run_lists_the_runs(tmp_path, capsys):
    assert _bench(tmp_path / "bench", "x=PGD", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "plain seed 0:" in out and "x seed 1:" in out
    assert out.count(os.path.join("bench", "runs")) == 4
    assert not (tmp_path / "bench" / "runs").exists()


# ------------------------------------------------------------------------------ configs, table
def _args(tmp_path, **kw):
    args = bm.build_parser().parse_args(
        ["--student-config", os.path.join(DEMO, "fcos_student.yaml"), "--teacher-config",
         os.path.join(DEMO, "fcos_teacher.yaml"), "--methods", "PGD",
         "--output", str(tmp_path), "--student-iters", "10", "SOLVER.BASE_LR", "0.002"]
    )  # fmt: skip
    vars(args).update(kw)
    return args


def test_student_configs_of_names_files_overrides_and_inherit(tmp_path):
    data = (["kd_shapes_mini_train"], "kd_shapes_mini_val", 6)

    def cfg_of(spec, **kw):
        method = bm.parse_method(spec, REGISTERED)
        return bm.student_config(_args(tmp_path, **kw), method, 3, data, "t.yaml", "t.pth")

    cfg = cfg_of("FitNet+LogitKD@MODEL.KD.LOGIT.TEMPERATURE=4.0")
    assert cfg.MODEL.KD.DISTILLERS == ["FitNet", "LogitKD"] and cfg.MODEL.KD.LOGIT.TEMPERATURE == 4
    assert (cfg.MODEL.KD.TEACHER.CONFIG_FILE, cfg.MODEL.KD.TEACHER.WEIGHTS) == ("t.yaml", "t.pth")
    assert cfg.SEED == 3 and cfg.SOLVER.MAX_ITER == 10 and cfg.SOLVER.STEPS == (8,)
    assert cfg.SOLVER.BASE_LR == 0.002 and cfg.DATASETS.TEST == ("kd_shapes_mini_val",)
    assert cfg.OUTPUT_DIR == os.path.join(str(tmp_path), "runs", "FitNet+LogitKD@MODEL.KD.LOGIT."
                                          "TEMPERATURE=4.0", "seed3")  # fmt: skip
    # the demo student config inherits the teacher's neck and head: the plain run keeps that
    plain = cfg_of("plain")
    assert plain.MODEL.KD.DISTILLERS == [] and plain.MODEL.KD.TEACHER.WEIGHTS == "t.pth"
    opts = ["SOLVER.BASE_LR", "0.002", "MODEL.KD.INIT_STUDENT_FROM_TEACHER", "False"]
    alone = cfg_of("plain", opts=opts)
    assert alone.MODEL.KD.DISTILLERS == [] and alone.MODEL.KD.TEACHER.WEIGHTS == ""
    inherit = cfg_of("plain", opts=opts, inherit=True)
    assert (
        inherit.MODEL.KD.INIT_STUDENT_FROM_TEACHER and inherit.MODEL.KD.TEACHER.WEIGHTS == "t.pth"
    )
    # a method file: its MODEL.KD settings, not its teacher nor its solver
    pgd = cfg_of(os.path.join(DEMO, "fcos_pgd.yaml"))
    assert pgd.MODEL.KD.DISTILLERS == ["PGD"] and pgd.MODEL.KD.PGD.TOPK == 9
    assert pgd.MODEL.KD.WARMUP_ITERS == 50 and pgd.MODEL.KD.TEACHER.CONFIG_FILE == "t.yaml"
    with pytest.raises(SystemExit, match="for a GFL student"):
        cfg_of(os.path.join(DEMO, "gfl_ld.yaml"))
    with pytest.raises(SystemExit, match="MODEL.KD.PGD.ALPHAA"):
        cfg_of("PGD@MODEL.KD.PGD.ALPHAA=1")


def test_num_classes_follow_the_dataset(tmp_path):
    cfg = bm.load_yacs(os.path.join(DEMO, "fcos_student.yaml"))
    bm.apply_data(cfg, ["a"], "b", 3)
    assert cfg.MODEL.FCOS.NUM_CLASSES == cfg.MODEL.GFL.NUM_CLASSES == 3
    assert cfg.MODEL.RETINANET.NUM_CLASSES == cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 54  # not a box head: untouched
