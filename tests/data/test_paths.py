"""Datasets given by path: voc:<dir>:<split> and coco:<json>[:<image root>] names."""

import io
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg, write_voc, write_voc_xml
from PIL import Image

from kd_det2.data import (
    DatasetError,
    DatasetPath,
    catalog,
    check_image,
    find_bccd_root,
    load_bccd_dicts,
    parse_dataset_name,
    prepare_dataset,
    prepare_datasets,
    register_dataset,
)

# a: two boxes (one past the border), one degenerate; b: size in its XML wrong; c: no object;
# d: a class ("zebra") that only the test split has
VOC_IMAGES = {
    "a": (64, 48, [("dog", 11, 21, 30, 40), ("cat", 50, 40, 80, 60), ("dog", 20, 20, 20, 30)]),
    "b": (64, 48, [("bird", 1, 1, 10, 10)]),
    "c": (64, 48, []),
    "d": (64, 48, [("zebra", 5, 5, 30, 30)]),
}
VOC_SPLITS = {"train": ["a", "b", "c"], "test": ["d", "a"], "negatives": ["c"]}


def _catalog():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    return DatasetCatalog, MetadataCatalog


@pytest.fixture
def voc_dir(tmp_path: Path) -> str:
    root = write_voc(tmp_path / "voc", VOC_IMAGES, VOC_SPLITS)
    write_voc_xml(os.path.join(root, "Annotations", "b.xml"), 200, 100, VOC_IMAGES["b"][2])
    return root


def _boxes(d):
    return [(a["category_id"], a["bbox"]) for a in d["annotations"]]


# ------------------------------------------------------------------------------------ names
def test_parse_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/u")
    assert parse_dataset_name("kd_shapes_val") is None
    assert parse_dataset_name("voc:/d/a:b/VOC:trainval") == DatasetPath(
        "voc", "/d/a:b/VOC", "trainval"
    )
    assert parse_dataset_name("voc:~/VOC:test").path == "/home/u/VOC"
    assert parse_dataset_name("voc:rel/VOC:val").path == str(tmp_path / "rel" / "VOC")
    assert parse_dataset_name("coco:/d/x.json") == DatasetPath("coco", "/d/x.json", None, "/d")
    assert parse_dataset_name("coco:a.JSON") == DatasetPath(
        "coco", str(tmp_path / "a.JSON"), None, str(tmp_path)
    )
    # the json ends at the first ".json" followed by ":"; the image root may contain ":"
    spec = parse_dataset_name("coco:/d/v.json.d/x.json:/img:2017")
    assert (spec.path, spec.image_root) == ("/d/v.json.d/x.json", "/img:2017")
    for bad in (
        "voc:/d/VOC",
        "voc:/d/VOC:",
        "voc::train",
        "voc:/d:a/b",
        "coco:/d/x.txt",
        "coco:a.json:",
    ):
        with pytest.raises(ValueError, match="expected"):
            parse_dataset_name(bad)


def test_unknown_name_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="voc:<dir>:<split>"):
        prepare_dataset("my_dataset_train")


# -------------------------------------------------------------------------------------- VOC
def test_voc_registers_and_loads(
    voc_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from detectron2.structures import BoxMode

    DatasetCatalog, MetadataCatalog = _catalog()
    monkeypatch.chdir(os.path.dirname(voc_dir))
    name = "voc:voc:train"  # relative folder "voc"
    with caplog.at_level(logging.INFO, logger="kd_det2.data"):
        prepare_dataset(name)
        prepare_dataset(name)  # idempotent
        register_dataset(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["bird", "cat", "dog", "zebra"]  # all XMLs, other splits too
    assert (meta.dirname, meta.split, meta.evaluator_type) == (voc_dir, "train", "coco")
    assert meta.image_root == os.path.join(voc_dir, "JPEGImages")
    a, b, c = DatasetCatalog.get(name)
    assert a["file_name"] == os.path.join(voc_dir, "JPEGImages", "a.jpg")
    assert [d["image_id"] for d in (a, b, c)] == [0, 1, 2]
    # 1-based xmin/ymin shifted by one; the cat clipped to 64 x 48; the zero-width dog skipped
    assert _boxes(a) == [(2, [10.0, 20.0, 30.0, 40.0]), (1, [49.0, 39.0, 64.0, 48.0])]
    assert all(x["bbox_mode"] == BoxMode.XYXY_ABS for x in a["annotations"])
    assert _boxes(b) == [(0, [0.0, 0.0, 10.0, 10.0])]
    assert (b["width"], b["height"]) == (64, 48)  # the image's size, not the XML's 200 x 100
    assert c["annotations"] == []  # a negative image, kept
    text = caplog.text
    assert "skipped 1 degenerate box" in text and "1 of 3 images have no object" in text
    assert "b.xml" in text and "differs from the image's size" in text
    assert text.count("skipped 1 degenerate") == 1  # reported once, not per load
    # the test split of the same folder has the same ids
    test_name = f"voc:{voc_dir}:test"
    prepare_dataset(test_name)
    assert MetadataCatalog.get(test_name).thing_classes == meta.thing_classes
    assert _boxes(DatasetCatalog.get(test_name)[0]) == [(3, [4.0, 4.0, 30.0, 30.0])]


def test_labels_txt_defines_names_and_order(voc_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    DatasetCatalog, MetadataCatalog = _catalog()
    Path(voc_dir, "labels.txt").write_text("dog\n\ncat \n")
    name = f"voc:{voc_dir}:train"
    with caplog.at_level(logging.WARNING, logger="kd_det2.data"):
        prepare_dataset(name)
    assert MetadataCatalog.get(name).thing_classes == ["dog", "cat"]
    a, b, _ = DatasetCatalog.get(name)
    assert [c for c, _ in _boxes(a)] == [0, 1]
    assert b["annotations"] == []  # the bird is not in labels.txt
    assert "{'bird': 1}" in caplog.text


def _break(root: str, case: str) -> str:
    """Damage a copy of the VOC folder; return the file the error must name."""
    jpeg = os.path.join(root, "JPEGImages", "a.jpg")
    if case == "missing folder":
        shutil.rmtree(root)
        return root
    if case == "missing split":
        return os.path.join(root, "ImageSets", "Main", "val.txt")
    if case == "missing xml":
        os.remove(os.path.join(root, "Annotations", "b.xml"))
        return os.path.join(root, "Annotations", "b.xml")
    if case == "missing image":
        os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
        return os.path.join(root, "JPEGImages", "b.jpg")
    if case == "truncated jpeg":
        data = Path(jpeg).read_bytes()
        Path(jpeg).write_bytes(data[: len(data) // 2])
        return jpeg
    if case == "not an image":
        Path(jpeg).write_bytes(b"GIF? no")
        return jpeg
    if case == "bad xml":
        Path(root, "Annotations", "d.xml").write_text("<annotation><object><name>x</name>")
        return os.path.join(root, "Annotations", "d.xml")  # d is not in train: scanned for names
    if case == "box without coordinates":
        Path(root, "Annotations", "b.xml").write_text(
            "<annotation><object><name>bird</name><bndbox><xmin>1</xmin></bndbox></object>"
            "</annotation>"
        )
        return os.path.join(root, "Annotations", "b.xml")
    if case == "no objects":
        Path(root, "ImageSets", "Main", "train.txt").write_text("c\n")
        return f"voc:{root}:train"
    if case == "repeated label":
        Path(root, "labels.txt").write_text("dog\ncat\ndog\n")
        return os.path.join(root, "labels.txt")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing folder", "does not exist"),
        ("missing split", r"does not exist \(splits found in .*: \['negatives', 'test', 'train'\]"),
        ("missing xml", "1 missing annotation file:"),
        ("missing image", "1 missing image "),
        ("truncated jpeg", "truncated or corrupt"),
        ("not an image", "not recognised by PIL"),
        ("bad xml", "cannot be parsed as XML"),
        ("box without coordinates", "has no numeric <bndbox>"),
        ("no objects", "none of its 1 images has an object"),
        ("repeated label", r"repeats \['dog'\]"),
    ],
)
def test_voc_bad_data_names_the_file(voc_dir: str, case: str, message: str) -> None:
    path = _break(voc_dir, case)
    split = "val" if case == "missing split" else "train"
    with pytest.raises(DatasetError, match=message) as err:
        prepare_dataset(f"voc:{voc_dir}:{split}")
    assert path in str(err.value)


def _jpeg(size=(32, 24), exif=None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.new("RGB", size, (200, 10, 10)).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def test_check_image(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    data = _jpeg()
    path.write_bytes(data + bytes(3000))  # a valid image, then a long trailer: decoded
    assert check_image(str(path)) == (32, 24)
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match="truncated"):
        check_image(str(path))
    exif = Image.Exif()
    exif[274] = 6  # rotated by 90 degrees: detectron2's read_image returns 24 x 32
    path.write_bytes(_jpeg(exif=exif))
    assert check_image(str(path)) == (24, 32)
    png = tmp_path / "x.png"
    Image.new("L", (10, 12)).save(png)
    assert check_image(str(png)) == (10, 12)
    png.write_bytes(png.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="x.png"):
        check_image(str(png))


def test_voc_other_image_extension(voc_dir: str) -> None:
    DatasetCatalog, _ = _catalog()
    jpg = os.path.join(voc_dir, "JPEGImages", "b.jpg")
    Image.open(jpg).save(os.path.join(voc_dir, "JPEGImages", "b.PNG"))
    os.remove(jpg)
    name = f"voc:{voc_dir}:train"
    prepare_dataset(name)
    assert DatasetCatalog.get(name)[1]["file_name"].endswith("b.PNG")


def test_other_processes_register_without_loading(
    voc_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectron2.utils import comm

    DatasetCatalog, _ = _catalog()
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    name = f"voc:{voc_dir}:test"
    prepare_datasets([name, name])
    assert name in DatasetCatalog.list() and name not in catalog._LOADED


@pytest.mark.skipif(find_bccd_root() is None, reason="BCCD dataset folder not available")
def test_bccd_folder_by_path_matches_bccd_names() -> None:
    DatasetCatalog, MetadataCatalog = _catalog()
    root = find_bccd_root()
    name = f"voc:{root}:val"
    prepare_dataset(name)
    classes = MetadataCatalog.get(name).thing_classes
    assert classes == ["Platelets", "RBC", "WBC"]
    by_path = DatasetCatalog.get(name)
    bccd = load_bccd_dicts(root, "val")
    remap = [classes.index(c) for c in ("RBC", "WBC", "Platelets")]
    assert [d["file_name"] for d in by_path] == [d["file_name"] for d in bccd]
    assert [[(c, b) for c, b in _boxes(d)] for d in by_path] == [
        [(remap[c], b) for c, b in _boxes(d)] for d in bccd
    ]


# ------------------------------------------------------------------------------------- COCO
def _coco(tmp_path: Path, image_dir: str, **changes) -> dict:
    """Three 64 x 48 JPEGs in ``image_dir`` and their json (category ids 7 and 3)."""
    os.makedirs(image_dir, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (64, 48), (i * 60, 0, 0)).save(os.path.join(image_dir, f"{i}.jpg"))
    data = {
        "images": [
            {"id": 10 + i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(3)
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 6, 10, 12]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [50, 40, 30, 20]},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [8, 8, 0, 10]},
        ],
    }
    for a in data["annotations"]:
        a.update(area=a["bbox"][2] * a["bbox"][3], iscrowd=0)
    data["images"][1]["width"] = 99  # wrong in the json: the image's size is used
    data.update(changes)
    return data


def _write_json(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_images_next_to_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from detectron2.structures import BoxMode

    DatasetCatalog, MetadataCatalog = _catalog()
    json_file = _write_json(tmp_path / "c" / "ann.json", _coco(tmp_path, str(tmp_path / "c")))
    name = f"coco:{json_file}"
    with caplog.at_level(logging.WARNING, logger="kd_det2.data"):
        prepare_dataset(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["dog", "cat"]  # in category-id order
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert (meta.json_file, meta.image_root) == (json_file, str(tmp_path / "c"))
    assert meta.evaluator_type == "coco"
    d0, d1, d2 = DatasetCatalog.get(name)
    assert d0["file_name"] == str(tmp_path / "c" / "0.jpg") and d0["image_id"] == 10
    assert _boxes(d0) == [(1, [5, 6, 10, 12]), (0, [50, 40, 14, 8])]  # the dog clipped
    assert d0["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert d1["annotations"] == [] and d1["width"] == 64  # degenerate box skipped; size fixed
    assert d2["annotations"] == []
    assert "skipped 1 degenerate" in caplog.text and "1.jpg" in caplog.text


def test_coco_explicit_image_root(tmp_path: Path) -> None:
    DatasetCatalog, MetadataCatalog = _catalog()
    json_file = _write_json(tmp_path / "ann" / "a.json", _coco(tmp_path, str(tmp_path / "im:g")))
    name = f"coco:{json_file}:{tmp_path / 'im:g'}"
    prepare_dataset(name)
    assert MetadataCatalog.get(name).image_root == str(tmp_path / "im:g")
    assert len(DatasetCatalog.get(name)) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"images": [{"id": i, "file_name": f"gone{i}.jpg"} for i in range(7)]},
            r"7 images of .* missing under .*gone0.jpg, .*gone4.jpg \(and 2 more\)",
        ),
        ({"categories": []}, "'categories' must be a non-empty list"),
        (
            {"annotations": [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [1, 1, 4, 4]}]},
            "annotation 1: category_id 5 is not in 'categories'",
        ),
        (
            {"annotations": [{"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 1, 4, 4]}]},
            "lacks 'area' or 'iscrowd'",
        ),
        ({"annotations": []}, "none of the 3 images"),
    ],
)
def test_coco_bad_data_names_the_file(tmp_path: Path, change: dict, message: str) -> None:
    json_file = _write_json(tmp_path / "a.json", _coco(tmp_path, str(tmp_path), **change))
    with pytest.raises(DatasetError, match=message) as err:
        prepare_dataset(f"coco:{json_file}")
    assert json_file in str(err.value)


def test_coco_unparsable_or_absent_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1,')
    with pytest.raises(DatasetError, match=r"broken.json cannot be parsed: .*line 1"):
        prepare_dataset(f"coco:{path}")
    with pytest.raises(DatasetError, match="absent.json does not exist"):
        prepare_dataset(f"coco:{tmp_path / 'absent.json'}")


# ---------------------------------------------------------------------- training, evaluation
def _voc_train_cfg(voc_dir: str, tmp_path: Path, num_classes: int = 4):
    cfg = tiny_cfg("FCOS", num_classes=num_classes)
    cfg.DATASETS.TRAIN = (f"voc:{voc_dir}:train",)
    cfg.DATASETS.TEST = (f"voc:{voc_dir}:test",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def test_kdtrainer_trains_and_evaluates_a_voc_folder(voc_dir: str, tmp_path: Path) -> None:
    from kd_det2.engine import KDTrainer

    cfg = _voc_train_cfg(voc_dir, tmp_path)
    trainer = KDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # 2 iterations, then COCOEvaluator on the test split (detectron2's hook)
    assert trainer.iter == 2
    results = KDTrainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    # COCOEvaluator on the converted VOC split: GT boxes as predictions give AP 100
    test_name = cfg.DATASETS.TEST[0]
    assert _ap_of_ground_truth(cfg, test_name, tmp_path) == pytest.approx(100.0)
    converted = json.loads(Path(_catalog()[1].get(test_name).json_file).read_text())
    assert [c["name"] for c in converted["categories"]] == ["bird", "cat", "dog", "zebra"]
    assert len(converted["annotations"]) == 3  # zebra in d; dog and clipped cat in a


def _ap_of_ground_truth(cfg, name: str, tmp_path: Path) -> float:
    """AP of KDTrainer's COCOEvaluator on ``name`` when the predictions are its GT boxes."""
    from detectron2.structures import Boxes, BoxMode, Instances

    from kd_det2.engine import KDTrainer

    evaluator = KDTrainer.build_evaluator(cfg, name, str(tmp_path / "eval"))
    evaluator.reset()
    for d in _catalog()[0].get(name):
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]
        ]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]["AP"]


def test_coco_evaluator_maps_category_ids_back(tmp_path: Path) -> None:
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 6, 10, 12], "area": 120},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [20, 8, 30, 30], "area": 900},
    ]
    for a in annotations:
        a["iscrowd"] = 0
    data = _coco(tmp_path, str(tmp_path), annotations=annotations)
    name = f"coco:{_write_json(tmp_path / 'a.json', data)}"
    prepare_dataset(name)  # category ids 7 and 3 become 1 and 0; evaluation maps them back
    assert _ap_of_ground_truth(tiny_cfg(), name, tmp_path) == pytest.approx(100.0)


def test_too_few_classes_fail_before_training(voc_dir: str, tmp_path: Path) -> None:
    from kd_det2.engine import KDTrainer

    with pytest.raises(ValueError, match="has 4 classes .* set MODEL.FCOS.NUM_CLASSES 4"):
        KDTrainer(_voc_train_cfg(voc_dir, tmp_path, num_classes=3))


def test_lazyconfig_dataloader_names(voc_dir: str, tmp_path: Path) -> None:
    import sys

    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate
    from detectron2.data import get_detection_dataset_dicts
    from omegaconf import OmegaConf

    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")
    sys.path.insert(0, tools)
    try:
        import lazyconfig_train_net
    finally:
        sys.path.remove(tools)
    names = [f"voc:{voc_dir}:train", f"voc:{voc_dir}:test"]
    dataset = L(get_detection_dataset_dicts)(names=names, filter_empty=False)
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": dataset}}})
    cfg.dataloader.test = {"dataset": {"names": names[1]}}
    lazyconfig_train_net.prepare_data(cfg)
    assert len(instantiate(cfg.dataloader.train.dataset)) == 5
