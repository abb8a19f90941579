"""kd_det2.engine.runs: schedules, config keys, records, step-time statistics."""

import json

import pytest
from conftest import tiny_cfg

from kd_det2.engine.runs import (
    _step_summary,
    cached_record,
    config_sha1,
    set_max_iter,
    write_json_atomic,
)


def test_set_max_iter_scales_every_lr_step():
    cfg = tiny_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 90000, (60000, 80000)
    set_max_iter(cfg, 900)
    assert cfg.SOLVER.MAX_ITER == 900 and cfg.SOLVER.STEPS == (600, 800)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 200, (160,)
    set_max_iter(cfg, 7)
    assert cfg.SOLVER.STEPS == (5,)  # floor(0.8 * 7)
    set_max_iter(cfg, 1)
    assert cfg.SOLVER.MAX_ITER == 1 and cfg.SOLVER.STEPS == ()  # no decay at iteration 0


def test_config_sha1_drops_only_the_given_keys():
    cfg = tiny_cfg()
    key = config_sha1(cfg)
    other = cfg.clone()
    other.OUTPUT_DIR = "elsewhere"
    other.MODEL.KD.WARMUP_ITERS = 7
    assert config_sha1(other) != key
    assert config_sha1(other, drop=("OUTPUT_DIR", "MODEL.KD")) == config_sha1(
        cfg, drop=("OUTPUT_DIR", "MODEL.KD")
    )
    other.MODEL.FPN.OUT_CHANNELS = 16
    assert config_sha1(other, drop=("OUTPUT_DIR", "MODEL.KD")) != config_sha1(
        cfg, drop=("OUTPUT_DIR", "MODEL.KD")
    )
    assert "KD" in cfg.MODEL  # the config itself is untouched


def test_records_are_keyed_and_need_their_files(tmp_path):
    path = str(tmp_path / "sub" / "r.json")
    write_json_atomic(path, {"config_sha1": "abc", "metrics": {"AP": float("nan")}})
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]  # no temporary left
    assert cached_record(path, "abc")["config_sha1"] == "abc"
    assert cached_record(path, "abd") is None
    assert cached_record(path, "abc", needs=[str(tmp_path / "model_final.pth")]) is None
    (tmp_path / "bad.json").write_text("{truncated")
    assert cached_record(str(tmp_path / "bad.json"), "abc") is None
    assert json.loads((tmp_path / "sub" / "r.json").read_text().replace("NaN", "null"))


def test_step_summary_leaves_out_warmup_but_keeps_one_iteration():
    s = _step_summary([9.0, 1.0, 2.0, 4.0], skip=1)
    assert s["count"] == 3 and s["skipped"] == 1
    assert s["mean"] == pytest.approx(7 / 3) and s["median"] == 2.0
    s = _step_summary([9.0, 1.0], skip=5)
    assert s["count"] == 1 and s["skipped"] == 1 and s["mean"] == 1.0
    assert _step_summary([3.0], skip=5)["mean"] == 3.0
