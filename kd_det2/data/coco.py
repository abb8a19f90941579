"""COCO-format json files: a checked loader around detectron2's ``load_coco_json``, and its
registration.

Checked when a dataset is loaded, each problem raising :class:`DatasetError` naming the json
(and the image files): the json parses and has ``images`` and ``categories`` lists; category
ids are unique; every image has ``id`` (unique) and ``file_name``; every annotation has a unique
``id``, an ``image_id``, a known ``category_id``, a ``bbox`` of 4 finite numbers, and the
``area`` and ``iscrowd`` fields that COCO evaluation reads; all image files exist and are
readable (:func:`check_image`); at least one image has a usable box.
"""

import contextlib
import io
import json
import logging
import math
import os
from typing import Dict, List
from unittest import mock

from .checks import DatasetError, check_images, clip_box, file_list_message, log_once

__all__ = ["load_coco_dicts", "register_coco"]

logger = logging.getLogger(__name__)


def _read_json(json_file: str) -> dict:
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except OSError as e:
        raise DatasetError(f"COCO json {json_file} cannot be read: {e.strerror or e}") from e
    except ValueError as e:  # JSONDecodeError (with line and column) or UnicodeDecodeError
        raise DatasetError(f"COCO json {json_file} cannot be parsed: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"COCO json {json_file}: the top level must be an object")
    return data


def _check_structure(data: dict, json_file: str) -> None:
    """Raise :class:`DatasetError` on the first structural problem of a COCO instances dict."""

    def fail(msg: str) -> None:
        raise DatasetError(f"COCO json {json_file}: {msg}")

    images, categories = data.get("images"), data.get("categories")
    annotations = data.setdefault("annotations", [])
    for key, value in (("images", images), ("categories", categories)):
        if not isinstance(value, list) or not value:
            fail(f"'{key}' must be a non-empty list")
    if not isinstance(annotations, list):
        fail("'annotations' must be a list")
    cat_ids = set()
    for c in categories:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            fail(f"category {c!r} needs an 'id' and a 'name'")
        if c["id"] in cat_ids:
            fail(f"category id {c['id']} is repeated")
        cat_ids.add(c["id"])
    image_ids = set()
    for im in images:
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            fail(f"image {im!r} needs an 'id' and a 'file_name'")
        if im["id"] in image_ids:
            fail(f"image id {im['id']} is repeated")
        image_ids.add(im["id"])
    ann_ids = set()
    for i, a in enumerate(annotations):
        if not isinstance(a, dict) or "id" not in a or "image_id" not in a:
            fail(f"annotation number {i + 1} needs an 'id' and an 'image_id'")
        where = f"annotation {a['id']}"
        if a["id"] in ann_ids:
            fail(f"annotation id {a['id']} is repeated")
        ann_ids.add(a["id"])
        if a.get("category_id") not in cat_ids:
            fail(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        box = a.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            fail(f"{where}: 'bbox' must be [x, y, width, height], got {box!r}")
        if "area" not in a or "iscrowd" not in a:
            fail(
                f"{where} lacks 'area' or 'iscrowd', which COCO evaluation reads "
                "(add them: area = width * height of the box, iscrowd = 0)"
            )


def _coco_api(data: dict):
    """A pycocotools COCO object indexing ``data`` (already parsed and checked)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = data
        api.createIndex()
    return api


def load_coco_dicts(json_file: str, image_root: str, dataset_name: str) -> List[dict]:
    """Load and check a COCO instances json as detectron2 dataset dicts (XYWH_ABS boxes).

    detectron2's ``load_coco_json`` builds the dicts (and sets ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` of ``dataset_name``: contiguous ids in category-id
    order) from the json parsed once here. Then width and height become those of the image
    files (after EXIF orientation), boxes are clipped to the image and degenerate ones (zero
    extent, or < 1 px after clipping) are skipped; both are reported once per process.

    Raises:
        DatasetError: see the module docstring.
    """
    from detectron2.data.datasets import load_coco_json

    data = _read_json(json_file)
    _check_structure(data, json_file)
    files = [os.path.join(image_root, im["file_name"]) for im in data["images"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        what = file_list_message("image", missing, f" of {json_file} missing under {image_root}")
        raise DatasetError(f"{dataset_name}: {what}")
    sizes: Dict[object, tuple] = {
        im["id"]: wh for im, wh in zip(data["images"], check_images(files, dataset_name))
    }
    for im in data["images"]:  # load_coco_json needs them; the check below corrects them
        im.setdefault("width", sizes[im["id"]][0])
        im.setdefault("height", sizes[im["id"]][1])
    api = _coco_api(data)
    try:
        # load_coco_json imports pycocotools' COCO when called: hand it the index of the json
        # parsed above instead of letting it parse the file a second time
        with mock.patch("pycocotools.coco.COCO", lambda *args, **kwargs: api):
            dicts = load_coco_json(json_file, image_root, dataset_name)
    except (AssertionError, KeyError, ValueError) as e:
        raise DatasetError(f"COCO json {json_file} is not valid: {e}") from e

    n_degenerate, n_objects, mismatch = 0, 0, []
    for d in dicts:
        width, height = sizes[d["image_id"]]
        if (d["width"], d["height"]) != (width, height):
            mismatch.append(d["file_name"])
            d["width"], d["height"] = width, height
        kept = []
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            box = clip_box(x, y, x + w, y + h, width, height)
            if box is None:
                n_degenerate += 1
                continue
            a["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            n_objects += not a.get("iscrowd", 0)
            kept.append(a)
        d["annotations"] = kept
    if n_degenerate:
        msg = "%s: skipped %d degenerate box(es) (zero extent or < 1 px after clipping)"
        log_once(
            logger, (dataset_name, "degenerate"), logging.WARNING, msg, dataset_name, n_degenerate
        )
    if mismatch:
        msg = "%s: the json's width/height differ from the image's size for %s; using the image's"
        what = file_list_message("image", mismatch)
        log_once(logger, (dataset_name, "size"), logging.WARNING, msg, dataset_name, what)
    if not n_objects:
        raise DatasetError(
            f"{dataset_name}: none of the {len(dicts)} images of {json_file} has a usable "
            f"(non-crowd, non-degenerate) box; a detection dataset needs annotated objects"
        )
    n_negative = sum(1 for d in dicts if not d["annotations"])
    if n_negative:
        msg = "%s: %d of %d images have no object (kept as negative images)"
        log_once(
            logger,
            (dataset_name, "negative"),
            logging.INFO,
            msg,
            dataset_name,
            n_negative,
            len(dicts),
        )
    return dicts


def register_coco(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO instances json as ``name`` (no-op if ``name`` is registered).

    The json file and the image folder must exist now; the rest is checked when the dataset is
    loaded, which also sets thing_classes (as detectron2's ``register_coco_instances`` does).
    Metadata now: json_file, image_root, evaluator_type "coco" (COCOEvaluator reads the json).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        return
    if not os.path.isfile(json_file):
        raise DatasetError(f"COCO json {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise DatasetError(f"image folder {image_root} of {json_file} does not exist")
    DatasetCatalog.register(name, lambda: load_coco_dicts(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
