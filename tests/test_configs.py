"""Every yacs config under projects/ builds its model on CPU (no weights needed)."""

import glob
import os

import pytest
from detectron2.modeling import build_model

from kd_det2.config import get_kd_cfg
from kd_det2.modeling import KDMetaArchBase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "projects", "**", "*.yaml"), recursive=True)
)


def test_configs_found():
    assert "projects/PGD/fcos_r50.yaml" in YAMLS and len(YAMLS) >= 10


@pytest.mark.parametrize("path", YAMLS)
def test_config_builds_model(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = get_kd_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.KD.TEACHER.WEIGHTS = ""
    cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    model = build_model(cfg)
    if isinstance(model, KDMetaArchBase):
        assert type(model.student).__name__ == cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
        assert list(model.distillers) == list(cfg.MODEL.KD.DISTILLERS)
        if len(model.distillers):
            assert model.teacher is not None and not model.teacher.training
