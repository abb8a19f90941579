"""Tests of the synthetic kd_shapes dataset generator and its registration."""

import json
import os
from collections import Counter
from typing import Iterator

import pytest
from conftest import catalog_without

from kd_det2.data import shapes
from kd_det2.data.shapes import KD_SHAPES_CLASSES, generate_kd_shapes

SIZE = 128


def _read_all(root: str, split: str) -> dict:
    """Json bytes and all image bytes of a generated split, keyed by relative path."""
    files = {"json": open(os.path.join(root, f"{split}.json"), "rb").read()}
    image_dir = os.path.join(root, split, "images")
    for name in sorted(os.listdir(image_dir)):
        with open(os.path.join(image_dir, name), "rb") as f:
            files[name] = f.read()
    return files


@pytest.fixture(scope="module")
def dataset64(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 64-image split (the mini_train recipe) shared by the content tests."""
    root = str(tmp_path_factory.mktemp("kd_shapes"))
    path = generate_kd_shapes(root, "mini_train", 64, SIZE, seed=2)
    with open(path) as f:
        return json.load(f)


def test_deterministic_and_seed_dependent(tmp_path) -> None:
    a, b, c = (str(tmp_path / x) for x in "abc")
    for root in (a, b):
        generate_kd_shapes(root, "train", 12, SIZE, seed=5)
    generate_kd_shapes(c, "train", 12, SIZE, seed=6)
    files_a, files_b, files_c = (_read_all(r, "train") for r in (a, b, c))
    assert len(files_a) == 13
    assert files_a == files_b
    assert files_a["json"] != files_c["json"]
    assert all(files_a[k] != files_c[k] for k in files_a if k != "json")


def test_idempotent_and_atomic(tmp_path) -> None:
    root = str(tmp_path)
    path = generate_kd_shapes(root, "val", 6, SIZE, seed=1)
    assert path == os.path.join(root, "val.json")
    image = os.path.join(root, "val", "images", "000000.png")
    os.utime(path, ns=(1, 1))
    os.utime(image, ns=(1, 1))
    assert generate_kd_shapes(root, "val", 6, SIZE, seed=1) == path
    assert os.stat(path).st_mtime_ns == 1 and os.stat(image).st_mtime_ns == 1
    assert not [n for n in os.listdir(root) if ".tmp" in n]
    # different parameters regenerate (and leave no temporary files behind)
    generate_kd_shapes(root, "val", 7, SIZE, seed=1)
    assert os.stat(path).st_mtime_ns != 1
    assert json.load(open(path))["info"]["num_images"] == 7
    assert not [n for n in os.listdir(root) if ".tmp" in n]


def test_crashed_run_regenerates(tmp_path, monkeypatch) -> None:
    root = str(tmp_path)
    calls = {"n": 0}
    render = shapes._render_image

    def failing(seed: int, index: int, image_size: int):
        calls["n"] += 1
        if index == 3:
            raise KeyboardInterrupt
        return render(seed, index, image_size)

    monkeypatch.setattr(shapes, "_render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_kd_shapes(root, "train", 5, SIZE, seed=0)
    assert not os.path.exists(os.path.join(root, "train.json"))
    monkeypatch.setattr(shapes, "_render_image", render)
    path = generate_kd_shapes(root, "train", 5, SIZE, seed=0)
    assert len(json.load(open(path))["images"]) == 5
    # a missing image also triggers regeneration
    os.remove(os.path.join(root, "train", "images", "000004.png"))
    generate_kd_shapes(root, "train", 5, SIZE, seed=0)
    assert os.path.isfile(os.path.join(root, "train", "images", "000004.png"))


def test_coco_json_content(dataset64: dict) -> None:
    assert [c["name"] for c in dataset64["categories"]] == KD_SHAPES_CLASSES
    assert [c["id"] for c in dataset64["categories"]] == list(range(1, 7))
    images = {im["id"]: im for im in dataset64["images"]}
    assert len(images) == 64
    assert all(im["height"] == SIZE and im["width"] == SIZE for im in images.values())
    ann_ids = [a["id"] for a in dataset64["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
    for a in dataset64["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["image_id"] in images
        assert 1 <= a["category_id"] <= 6
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= SIZE and y + h <= SIZE
        assert a["area"] == w * h and a["iscrowd"] == 0


def test_classes_scales_and_empty_images(dataset64: dict) -> None:
    anns = dataset64["annotations"]
    assert set(Counter(a["category_id"] for a in anns)) == set(range(1, 7))
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in anns]
    assert min(sides) < 12 and max(sides) > 50
    per_image = Counter(a["image_id"] for a in anns)
    assert max(per_image.values()) <= 8
    assert 2.5 < len(anns) / 64 < 6
    # seed 2 (the mini_train recipe) contains at least one image without any object
    assert len(per_image) < 64


def _render_many(seed: int, n: int) -> list:
    return [shapes._render_image(seed, i, SIZE)[1] for i in range(n)]


def test_empty_images_fraction() -> None:
    annos = _render_many(0, 300)
    empty = sum(1 for a in annos if not a)
    assert 1 <= empty <= 25


@pytest.fixture
def tmp_registration(tmp_path, monkeypatch) -> Iterator[str]:
    """Temporarily replace the kd_shapes registrations with ones rooted in tmp_path."""
    saved_registered = dict(shapes._REGISTERED)
    monkeypatch.setenv("KD_DET2_DATASETS", str(tmp_path))
    try:
        with catalog_without(list(shapes._SPLITS)):
            yield str(tmp_path)
    finally:
        shapes._REGISTERED.clear()
        shapes._REGISTERED.update(saved_registered)


def test_register_lazy_and_load(tmp_registration: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    shapes.register_kd_shapes()
    shapes.register_kd_shapes()  # idempotent
    assert not os.listdir(tmp_registration)  # nothing generated at registration
    meta = MetadataCatalog.get("kd_shapes_mini_val")
    assert meta.thing_classes == KD_SHAPES_CLASSES
    assert meta.evaluator_type == "coco"
    assert meta.json_file == os.path.join(tmp_registration, "mini_val.json")
    assert meta.image_root == os.path.join(tmp_registration, "mini_val", "images")
    shapes.prepare_dataset("kd_shapes_mini_val")
    shapes.prepare_dataset("not_a_kd_dataset")
    assert os.path.isfile(meta.json_file)

    dicts = DatasetCatalog.get("kd_shapes_mini_train")
    assert len(dicts) == 64
    assert os.path.isfile(os.path.join(tmp_registration, "mini_train.json"))
    cats = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert cats == set(range(6))
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert all(d["height"] == SIZE and d["width"] == SIZE for d in dicts)
    assert not os.path.exists(os.path.join(tmp_registration, "train.json"))  # still lazy


def test_coco_evaluator_on_ground_truth(tmp_registration: str, tmp_path) -> None:
    """Ground truth fed back as predictions scores AP 100 (category id mapping is right)."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    shapes.register_kd_shapes()
    shapes.prepare_dataset("kd_shapes_mini_val")
    evaluator = COCOEvaluator("kd_shapes_mini_val", output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for d in DatasetCatalog.get("kd_shapes_mini_val"):
        anns = d["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
