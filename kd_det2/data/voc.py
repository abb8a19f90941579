"""Pascal VOC layout: a generic validated loader, its registration, and BCCD.

A VOC folder holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>`` and
``ImageSets/Main/<split>.txt`` (one id per line; further columns are ignored). Boxes follow the
detectron2 VOC convention: the 1-based inclusive pixel indices of the XML become XYXY_ABS
coordinates by subtracting 1 from xmin/ymin. Class names of a folder (:func:`voc_class_names`)
are those of its ``labels.txt``, else the sorted set of object names over all its XML files.
"""

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .checks import DatasetError, check_images, clip_box, file_list_message, log_once

logger = logging.getLogger(__name__)

__all__ = [
    "BCCD_CLASSES",
    "BCCD_SPLITS",
    "IMAGE_EXTENSIONS",
    "find_bccd_root",
    "load_bccd_dicts",
    "load_voc_dicts",
    "register_bccd",
    "register_voc",
    "voc_class_names",
]

BCCD_CLASSES: List[str] = ["RBC", "WBC", "Platelets"]
BCCD_SPLITS = ("train", "val", "test", "trainval")
#: image file extensions looked for in JPEGImages/ (any case); ``<id>.jpg`` wins a tie
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABELS_FILE = "labels.txt"
_SUBDIRS = ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main"))


class VocXml(NamedTuple):
    """One parsed annotation file: <size> (0 when absent) and (name, (xmin, ymin, xmax, ymax))
    of each <object>, coordinates as written (1-based, inclusive)."""

    width: int
    height: int
    objects: List[Tuple[str, Tuple[float, float, float, float]]]


_XML_CACHE: Dict[str, Tuple[Tuple[int, int], VocXml]] = {}  # path -> ((size, mtime), parsed)


def _class_key(name: str) -> str:
    """BCCD's name normalisation: case, whitespace and a trailing plural 's' are ignored."""
    key = re.sub(r"\s+", "", name).lower()
    return key[:-1] if key.endswith("s") else key


def _text(node: Optional[ET.Element], tag: str) -> Optional[str]:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _int(text: Optional[str]) -> int:
    try:
        return max(int(float(text)), 0) if text else 0
    except ValueError:
        return 0


def parse_voc_xml(path: str) -> VocXml:
    """Parse one VOC annotation file (memoised on the file's size and modification time).

    Raises :class:`DatasetError` naming the file when it cannot be read or parsed, or when an
    object has no <name> or no four finite numeric <bndbox> coordinates.
    """
    try:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
        cached = _XML_CACHE.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"annotation {path} cannot be parsed as XML ({e})") from e
    except OSError as e:
        raise DatasetError(f"annotation {path} cannot be read: {e.strerror or e}") from e
    size = root.find("size")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if not name:
            raise DatasetError(f"annotation {path}: <object> number {i + 1} has no <name>")
        box = obj.find("bndbox")
        try:
            coords = tuple(float(_text(box, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            coords = ()
        if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
            raise DatasetError(
                f"annotation {path}: object {i + 1} ('{name}') has no numeric "
                "<bndbox> <xmin>/<ymin>/<xmax>/<ymax>"
            )
        objects.append((name, coords))
    parsed = VocXml(_int(_text(size, "width")), _int(_text(size, "height")), objects)
    _XML_CACHE[path] = (stamp, parsed)
    return parsed


def check_voc_dir(dirname: str, split: Optional[str] = None) -> None:
    """Raise :class:`DatasetError` when ``dirname`` lacks the VOC sub-folders or the split file."""
    if not os.path.isdir(dirname):
        raise DatasetError(f"VOC folder {dirname} does not exist")
    missing = [s for s in _SUBDIRS if not os.path.isdir(os.path.join(dirname, s))]
    if missing:
        raise DatasetError(
            f"VOC folder {dirname} lacks the sub-folder(s) {missing}; expected "
            "Annotations/*.xml, JPEGImages/* and ImageSets/Main/<split>.txt"
        )
    if split is not None and not os.path.isfile(_split_file(dirname, split)):
        main = os.path.join(dirname, "ImageSets", "Main")
        found = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt"))
        raise DatasetError(
            f"VOC split file {_split_file(dirname, split)} does not exist "
            f"(splits found in {main}: {found})"
        )


def _split_file(dirname: str, split: str) -> str:
    return os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")


def _read_labels(path: str) -> List[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        problem = f"repeats {dup}" if dup else "lists no class name"
        raise DatasetError(f"{path} {problem}; it needs one distinct class name per line")
    return names


def voc_class_names(dirname: str) -> List[str]:
    """Class names of a VOC folder: its ``labels.txt`` (one name per line, in id order) when
    present, else the sorted set of <object> names over ALL ``Annotations/*.xml`` (every split
    of the folder then gets the same ids)."""
    labels = os.path.join(dirname, LABELS_FILE)
    if os.path.isfile(labels):
        return _read_labels(labels)
    check_voc_dir(dirname)
    ann = os.path.join(dirname, "Annotations")
    files = sorted(f for f in os.listdir(ann) if f.lower().endswith(".xml"))
    names = {n for f in files for n, _ in parse_voc_xml(os.path.join(ann, f)).objects}
    if not names:
        raise DatasetError(
            f"no <object> in any of the {len(files)} XML files of {ann}: nothing to detect "
            f"(add objects, or a {LABELS_FILE} naming the classes)"
        )
    return sorted(names)


def _image_files(dirname: str, file_ids: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(image path per id, ids without an image); ``<id>.jpg`` first, else the only image
    ``<id>.<ext>`` of JPEGImages/ with an extension of :data:`IMAGE_EXTENSIONS`."""
    image_dir = os.path.join(dirname, "JPEGImages")
    by_stem: Dict[str, List[str]] = {}
    for f in os.listdir(image_dir):
        stem, ext = os.path.splitext(f)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, []).append(f)
    files, missing = [], []
    for file_id in file_ids:
        found = sorted(by_stem.get(file_id, []))
        if f"{file_id}.jpg" in found:
            found = [f"{file_id}.jpg"]
        if len(found) > 1:
            raise DatasetError(f"several images for id '{file_id}' in {image_dir}: {found}")
        if not found:
            missing.append(os.path.join(image_dir, f"{file_id}.jpg"))
        files.append(os.path.join(image_dir, found[0]) if found else "")
    return files, missing


def load_voc_dicts(
    dirname: str,
    split: str,
    class_names: Optional[Sequence[str]] = None,
    class_key: Callable[[str], str] = str.strip,
) -> List[dict]:
    """Load and check one VOC split as detectron2 dataset dicts (XYXY_ABS boxes, 0-based ids).

    Args:
        dirname: the VOC folder.
        split: name of ``ImageSets/Main/{split}.txt``.
        class_names: the classes, in id order (default: :func:`voc_class_names`).
        class_key: maps a class name (of ``class_names`` and of each <object>) to the key they
            are matched on; objects of other classes are skipped and counted.

    Boxes are clipped to the image. A box is skipped when its annotated extent is zero
    (xmax <= xmin or ymax <= ymin in the XML: a click without a drag in the labelling tool) or
    when it is narrower than 1 px after clipping. Skipped boxes and images left without boxes
    (kept as negative images) are reported once per split and process. ``image_id`` is the
    index of the image in the split file; width and height are those of the image file.

    Raises:
        DatasetError: naming the file(s): missing folder, split file, XML or image files; an
            XML that cannot be parsed; an unreadable or truncated image; or a split where no
            image has a box.
    """
    from detectron2.structures import BoxMode

    name = f"voc:{dirname}:{split}"
    check_voc_dir(dirname, split)
    class_names = voc_class_names(dirname) if class_names is None else list(class_names)
    class_ids: Dict[str, int] = {class_key(c): i for i, c in enumerate(class_names)}
    with open(_split_file(dirname, split)) as f:
        file_ids = [line.split()[0] for line in f if line.strip()]
    if not file_ids:
        raise DatasetError(f"VOC split file {_split_file(dirname, split)} lists no image id")
    xml_files = [os.path.join(dirname, "Annotations", f"{i}.xml") for i in file_ids]
    missing = [p for p in xml_files if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{name}: " + file_list_message("missing annotation file", missing))
    image_files, missing = _image_files(dirname, file_ids)
    if missing:
        msg = file_list_message("missing image", missing, " (no .jpg or other image for the id)")
        raise DatasetError(f"{name}: {msg}")
    xmls = [parse_voc_xml(p) for p in xml_files]
    sizes = check_images(image_files, name)

    dicts = []
    n_degenerate, unknown, size_mismatch = 0, {}, []
    for image_id, (xml, file_name, (width, height)) in enumerate(zip(xmls, image_files, sizes)):
        if xml.width and xml.height and (xml.width, xml.height) != (width, height):
            size_mismatch.append(xml_files[image_id])
        annotations = []
        for obj_name, (x0, y0, x1, y1) in xml.objects:
            cls = class_ids.get(class_key(obj_name))
            if cls is None:
                unknown[obj_name] = unknown.get(obj_name, 0) + 1
                continue
            box = None
            if x1 > x0 and y1 > y0:  # the annotated extent, before the 1-based shift
                box = clip_box(x0 - 1.0, y0 - 1.0, x1, y1, width, height)
            if box is None:
                n_degenerate += 1
                continue
            annotations.append({"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls})
        dicts.append(
            {
                "file_name": file_name,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    _report(name, dicts, n_degenerate, unknown, size_mismatch)
    return dicts


def _report(name: str, dicts: List[dict], n_degenerate: int, unknown: dict, mismatch: list) -> None:
    """Log the per-split summaries once; raise when no image has a box."""
    n_negative = sum(1 for d in dicts if not d["annotations"])
    skipped = []
    if n_degenerate:
        skipped.append(f"{n_degenerate} degenerate box(es)")
        msg = "%s: skipped %d degenerate box(es) (zero extent or < 1 px after clipping)"
        log_once(logger, (name, "degenerate"), logging.WARNING, msg, name, n_degenerate)
    if unknown:
        skipped.append(f"objects of unknown classes {unknown}")
        msg = "%s: skipped objects of classes not in the class list (%s): %s"
        log_once(logger, (name, "unknown"), logging.WARNING, msg, name, LABELS_FILE, unknown)
    if mismatch:
        msg = (
            "%s: the <size> of %s differs from the image's size (after EXIF orientation); the "
            "image's size is used: check the boxes of these images"
        )
        what = file_list_message("annotation file", mismatch)
        log_once(logger, (name, "size"), logging.WARNING, msg, name, what)
    if n_negative == len(dicts):
        after = f" after skipping {' and '.join(skipped)}" if skipped else ""
        raise DatasetError(
            f"{name}: none of its {len(dicts)} images has an object{after}; "
            "a detection split needs annotated objects"
        )
    if n_negative:
        msg = "%s: %d of %d images have no object (kept as negative images)"
        log_once(logger, (name, "negative"), logging.INFO, msg, name, n_negative, len(dicts))


def register_voc(
    name: str,
    dirname: str,
    split: str,
    class_names: Optional[Sequence[str]] = None,
    class_key: Callable[[str], str] = str.strip,
) -> None:
    """Register VOC ``split`` of ``dirname`` as ``name`` (no-op if ``name`` is registered).

    The folder layout and the split file are checked now; images and boxes when the dataset is
    loaded. Metadata: thing_classes (``class_names``, default :func:`voc_class_names`),
    dirname, split, image_root and evaluator_type "coco" (COCOEvaluator converts the dicts to a
    COCO json with detectron2's ``convert_to_coco_json``).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        return
    check_voc_dir(dirname, split)
    classes = voc_class_names(dirname) if class_names is None else list(class_names)
    DatasetCatalog.register(
        name, lambda: load_voc_dicts(dirname, split, classes, class_key=class_key)
    )
    MetadataCatalog.get(name).set(
        thing_classes=classes,
        dirname=dirname,
        split=split,
        image_root=os.path.join(dirname, "JPEGImages"),
        evaluator_type="coco",
    )


# ---------------------------------------------------------------------------------------- BCCD
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
        if all((path / sub).is_dir() for sub in _SUBDIRS):
            return str(path)
    logger.debug("BCCD not found; tried %s", [str(p) for p in candidates])
    return None


def load_bccd_dicts(dirname: str, split: str) -> List[dict]:
    """A BCCD split: :func:`load_voc_dicts` with :data:`BCCD_CLASSES`, whose names are matched
    ignoring case, whitespace and a plural 's' ("rbc", "Platelet" ...)."""
    return load_voc_dicts(dirname, split, BCCD_CLASSES, class_key=_class_key)


def register_bccd(root: Optional[str] = None) -> None:
    """Register bccd_{train,val,test,trainval} when the BCCD folder exists (else do nothing).

    See :func:`find_bccd_root` for how the folder is located. Splits without an
    ``ImageSets/Main/{split}.txt`` and names that are already registered are skipped.
    Loading is lazy; metadata as :func:`register_voc` (thing_classes :data:`BCCD_CLASSES`).
    """
    dirname = find_bccd_root(root)
    if dirname is None:
        return
    for split in BCCD_SPLITS:
        if os.path.isfile(_split_file(dirname, split)):
            register_voc(f"bccd_{split}", dirname, split, BCCD_CLASSES, class_key=_class_key)
