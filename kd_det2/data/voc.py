"""BCCD (blood cell detection, Pascal VOC layout) loading and detectron2 registration.

The folder must contain ``Annotations/*.xml``, ``JPEGImages/*.jpg`` and
``ImageSets/Main/{split}.txt``. Boxes follow the detectron2 VOC convention: the 1-based inclusive
pixel indices of the XML become XYXY_ABS coordinates by subtracting 1 from xmin/ymin.
"""

import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

logger = logging.getLogger(__name__)

__all__ = ["BCCD_CLASSES", "BCCD_SPLITS", "find_bccd_root", "load_voc_dicts", "register_bccd"]

BCCD_CLASSES: List[str] = ["RBC", "WBC", "Platelets"]
BCCD_SPLITS = ("train", "val", "test", "trainval")
_WARNED: Set[Tuple[str, str]] = set()  # (dirname, split) whose skipped boxes were already reported


def _class_key(name: str) -> str:
    """Normalise a class name: case, whitespace and a trailing plural 's' are ignored."""
    key = re.sub(r"\s+", "", name).lower()
    return key[:-1] if key.endswith("s") else key


def _default_candidates() -> List[Path]:
    candidates = []
    env = os.environ.get("KD_DET2_BCCD")
    if env:
        candidates.append(Path(env))
    # ../shared/datasets/BCCD relative to the repository root (the parent of the kd_det2 package)
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "BCCD")
    candidates.append(Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "BCCD")
    return candidates


def find_bccd_root(root: Optional[str] = None) -> Optional[str]:
    """Return the BCCD folder to use, or None when it cannot be found.

    An explicit ``root`` is the only candidate; otherwise $KD_DET2_BCCD, then
    ``../shared/datasets/BCCD`` relative to the repository root, then
    ``$DETECTRON2_DATASETS/BCCD`` (default ``datasets/BCCD``) are tried in order.
    """
    candidates = [Path(root)] if root is not None else _default_candidates()
    for path in candidates:
        if (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir():
            return str(path)
    logger.debug("BCCD not found; tried %s", [str(p) for p in candidates])
    return None


def _text(node: ET.Element, tag: str) -> Optional[str]:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else None


def load_voc_dicts(
    dirname: str, split: str, class_names: Sequence[str] = BCCD_CLASSES
) -> List[dict]:
    """Load one VOC split as detectron2 dataset dicts (XYXY_ABS boxes, 0-based category ids).

    Boxes are clipped to the image. A box is skipped when its annotated extent is zero
    (xmax <= xmin or ymax <= ymin in the XML: a click without a drag in the labelling tool) or
    when it is narrower than 1 px after clipping; objects of unknown classes are skipped too.
    Skipped boxes are counted and reported with one warning per split (and process).
    ``image_id`` is the index of the image in the split file.
    """
    from detectron2.structures import BoxMode

    class_ids: Dict[str, int] = {_class_key(c): i for i, c in enumerate(class_names)}
    with open(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")) as f:
        file_ids = [line.split()[0] for line in f if line.strip()]

    dicts = []
    n_degenerate, unknown = 0, {}
    for image_id, file_id in enumerate(file_ids):
        root = ET.parse(os.path.join(dirname, "Annotations", f"{file_id}.xml")).getroot()
        file_name = os.path.join(dirname, "JPEGImages", f"{file_id}.jpg")
        size = root.find("size")
        width = int(float(_text(size, "width") or 0)) if size is not None else 0
        height = int(float(_text(size, "height") or 0)) if size is not None else 0
        if width <= 0 or height <= 0:
            from PIL import Image

            with Image.open(file_name) as im:
                width, height = im.size
        annotations = []
        for obj in root.findall("object"):
            name = _text(obj, "name") or ""
            cls = class_ids.get(_class_key(name))
            if cls is None:
                unknown[name] = unknown.get(name, 0) + 1
                continue
            box = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(_text(box, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError, AttributeError):
                n_degenerate += 1
                continue
            if x1 <= x0 or y1 <= y0:
                n_degenerate += 1
                continue
            x0, y0 = min(max(x0 - 1.0, 0.0), width), min(max(y0 - 1.0, 0.0), height)
            x1, y1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                n_degenerate += 1
                continue
            annotations.append(
                {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls}
            )
        dicts.append(
            {
                "file_name": file_name,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    level = logging.DEBUG if (dirname, split) in _WARNED else logging.WARNING
    if n_degenerate or unknown:
        _WARNED.add((dirname, split))
    if n_degenerate:
        msg = "VOC %s/%s: skipped %d degenerate box(es) (zero extent or < 1 px after clipping)"
        logger.log(level, msg, dirname, split, n_degenerate)
    if unknown:
        msg = "VOC %s/%s: skipped objects of unknown classes %s"
        logger.log(level, msg, dirname, split, unknown)
    return dicts


def register_bccd(root: Optional[str] = None) -> None:
    """Register bccd_{train,val,test,trainval} when the BCCD folder exists (else do nothing).

    See :func:`find_bccd_root` for how the folder is located. Splits without an
    ``ImageSets/Main/{split}.txt`` and names that are already registered are skipped.
    Loading is lazy; metadata: thing_classes, evaluator_type='coco', dirname, split.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dirname = find_bccd_root(root)
    if dirname is None:
        return
    for split in BCCD_SPLITS:
        name = f"bccd_{split}"
        if name in DatasetCatalog.list():
            continue
        if not os.path.isfile(os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")):
            continue
        DatasetCatalog.register(name, lambda d=dirname, s=split: load_voc_dicts(d, s))
        MetadataCatalog.get(name).set(
            thing_classes=list(BCCD_CLASSES), evaluator_type="coco", dirname=dirname, split=split
        )
