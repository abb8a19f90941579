"""Tests of the VOC-layout (BCCD) loader and its registration."""

import logging
import os
from pathlib import Path
from typing import Iterator

import pytest
from conftest import catalog_without, write_voc

from kd_det2.data import voc
from kd_det2.data.voc import BCCD_CLASSES, find_bccd_root, load_bccd_dicts, register_bccd

REPO_ROOT = Path(__file__).resolve().parents[2]
BCCD_PATH = os.environ.get("KD_DET2_BCCD", str(REPO_ROOT.parent / "shared" / "datasets" / "BCCD"))


@pytest.fixture
def tiny_voc(tmp_path: Path) -> str:
    """A two-image VOC folder with one degenerate box and one box past the image border."""
    objects_a = [(" rbc ", 11, 21, 30, 40), ("WBC", 50, 50, 50, 60), ("Platelets", 90, 70, 130, 95)]
    images = {"img_a": (100, 80, objects_a), "img_b": (100, 80, [("PLATELET", 1, 1, 10, 10)])}
    return write_voc(tmp_path, images, {"train": ["img_a", "img_b"], "val": ["img_b"]})


def test_load_clip_skip_and_normalise(tiny_voc: str, caplog: pytest.LogCaptureFixture) -> None:
    from detectron2.structures import BoxMode

    with caplog.at_level(logging.WARNING, logger=voc.__name__):
        dicts = load_bccd_dicts(tiny_voc, "train")
    assert len(dicts) == 2
    a, b = dicts
    assert a["file_name"] == os.path.join(tiny_voc, "JPEGImages", "img_a.jpg")
    assert (a["height"], a["width"]) == (80, 100)
    assert a["image_id"] != b["image_id"]
    boxes = [(x["category_id"], x["bbox"]) for x in a["annotations"]]
    # " rbc " normalised, 1-based xmin/ymin shifted; WBC of zero width skipped; platelet clipped
    assert boxes == [(0, [10.0, 20.0, 30.0, 40.0]), (2, [89.0, 69.0, 100.0, 80.0])]
    assert all(x["bbox_mode"] == BoxMode.XYXY_ABS for x in a["annotations"])
    assert [(x["category_id"], x["bbox"]) for x in b["annotations"]] == [(2, [0, 0, 10, 10])]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 degenerate" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=voc.__name__):
        load_bccd_dicts(tiny_voc, "train")  # reported once per split only
    assert not caplog.records


def test_box_fully_outside_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_voc(
        tmp_path, {"x": (50, 50, [("RBC", 60, 5, 70, 20), ("RBC", 5, 5, 20, 20)])}, {"test": ["x"]}
    )
    with caplog.at_level(logging.WARNING, logger=voc.__name__):
        (d,) = load_bccd_dicts(str(tmp_path), "test")
    assert [a["bbox"] for a in d["annotations"]] == [[4.0, 4.0, 20.0, 20.0]]
    assert "skipped 1 degenerate" in caplog.text


@pytest.fixture
def clean_bccd_names() -> Iterator[None]:
    """Temporarily remove the bccd_* registrations (restored afterwards)."""
    with catalog_without([f"bccd_{s}" for s in voc.BCCD_SPLITS]):
        yield


def test_register_tmp_root(tiny_voc: str, clean_bccd_names: None) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_bccd(tiny_voc)
    register_bccd(tiny_voc)  # idempotent
    assert "bccd_train" in DatasetCatalog.list() and "bccd_val" in DatasetCatalog.list()
    assert "bccd_test" not in DatasetCatalog.list()  # no ImageSets/Main/test.txt
    meta = MetadataCatalog.get("bccd_val")
    assert meta.thing_classes == BCCD_CLASSES
    assert (meta.evaluator_type, meta.dirname, meta.split) == ("coco", tiny_voc, "val")
    assert len(DatasetCatalog.get("bccd_val")) == 1


def test_missing_root_registers_nothing(tmp_path: Path, clean_bccd_names: None) -> None:
    from detectron2.data import DatasetCatalog

    assert find_bccd_root(str(tmp_path / "nope")) is None
    register_bccd(str(tmp_path / "nope"))
    assert not [n for n in DatasetCatalog.list() if n.startswith("bccd_")]


@pytest.mark.skipif(not os.path.isdir(BCCD_PATH), reason="BCCD dataset folder not available")
def test_real_bccd() -> None:
    counts = {}
    for split in ("train", "val"):
        dicts = load_bccd_dicts(BCCD_PATH, split)
        counts[split] = len(dicts)
        for d in dicts:
            assert (d["width"], d["height"]) == (640, 480)
            for a in d["annotations"]:
                x0, y0, x1, y1 = a["bbox"]
                assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
                assert x1 - x0 >= 1 and y1 - y0 >= 1
                assert a["category_id"] in (0, 1, 2)
        assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0, 1, 2}
    assert counts == {"train": 205, "val": 87}
