"""Embedded synthetic detection dataset ("kd_shapes") and its detectron2 registration.

Every image is square (default 128x128 px) and is drawn with numpy + OpenCV from a per-image
random generator seeded with ``(seed, image_index)``, so the data is fully deterministic.
The task is made deliberately non-trivial so that a small student is clearly worse than a
larger teacher:

* 6 classes (:data:`KD_SHAPES_CLASSES`) with random colours, slight rotations (+-15 degrees)
  for square/triangle/star/cross and a log-uniform scale from ~6 px to 60% of the image side;
* textured backgrounds (low-frequency noise, gradients, stripes, checkerboards) blended with
  per-image random colours, optional blur and pixel noise;
* un-annotated clutter (lines, scribbles, elongated blobs, arcs, specks), partly drawn over objects;
* 0-8 objects per image (~3% images have no objects at all) drawn in random order, so later
  shapes occlude earlier ones.

Annotation convention: an object is annotated only when at least ``MIN_VISIBLE_FRACTION`` of
its full-shape pixel mask is visible (inside the image and not covered by later shapes or
clutter). The box of a kept object is the tight box of its *full* (un-occluded) shape, clipped
to the image borders. Boxes are integer pixel-tight XYWH; ``area`` is the box area.
"""

import argparse
import json
import logging
import math
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["KD_SHAPES_CLASSES", "GENERATOR_VERSION", "generate_kd_shapes", "register_kd_shapes"]
__all__ += ["register_kd_shapes_split", "prepare_dataset", "default_root"]

KD_SHAPES_CLASSES: List[str] = ["circle", "square", "triangle", "star", "ring", "cross"]
GENERATOR_VERSION = 1
MIN_VISIBLE_FRACTION = 0.3
EMPTY_IMAGE_PROB = 0.03
MAX_OBJECTS = 8
MIN_SHAPE_SIZE = 6.0  # diameter of the shape's circumscribed circle, px
MAX_SHAPE_FRACTION = 0.6  # of the image side

# name -> (split, num_images, seed); all at the default image size
_SPLITS: Dict[str, Tuple[str, int, int]] = {
    "kd_shapes_train": ("train", 1000, 0),
    "kd_shapes_val": ("val", 200, 1),
    "kd_shapes_mini_train": ("mini_train", 64, 2),
    "kd_shapes_mini_val": ("mini_val", 16, 3),
}
# registered dataset name -> generate_kd_shapes kwargs (used by prepare_dataset)
_REGISTERED: Dict[str, dict] = {}
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, dtype=np.float64) * _ONE).astype(np.int32)


def _polygon(rng: np.random.Generator, cls: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Vertices of a (slightly rotated) polygonal shape inscribed in a circle of radius r."""
    theta = math.radians(rng.uniform(-15.0, 15.0))
    if cls in ("square", "triangle"):
        n = 4 if cls == "square" else 3
        ang, rad = np.radians((45.0 if n == 4 else -90.0) + 360.0 / n * np.arange(n)), np.full(n, r)
    elif cls == "star":
        ang = np.radians(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.5))
    else:  # cross
        w = rng.uniform(0.25, 0.35)
        a = 1.0 / math.hypot(1.0, w)  # arm length so that the outer corners lie on the circle
        w *= a
        pts = r * np.array(
            [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a)]
            + [(-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
        )
        ang, rad = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
    ang = ang + theta
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def _shape_alpha(
    rng: np.random.Generator, cls: str, size: int, cx: float, cy: float, r: float
) -> np.ndarray:
    """Anti-aliased uint8 alpha map (0..255) of one class shape on a size x size canvas."""
    alpha = np.zeros((size, size), np.uint8)
    c = tuple(int(v) for v in _fix([cx, cy]))
    if cls in ("circle", "ring"):
        cv2.circle(alpha, c, int(round(r * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
        if cls == "ring":
            r_in = int(round(r * rng.uniform(0.45, 0.65) * _ONE))
            cv2.circle(alpha, c, r_in, 0, -1, cv2.LINE_AA, _SHIFT)
    else:
        poly = _fix(_polygon(rng, cls, cx, cy, r))
        cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA, _SHIFT)
    return alpha


def _clutter_alpha(rng: np.random.Generator, size: int, lo: float, hi: float) -> np.ndarray:
    """Alpha map of one un-annotated distractor drawn within [lo, hi) of the canvas."""
    alpha = np.zeros((size, size), np.uint8)
    kind = rng.integers(5)
    p = rng.uniform(lo, hi, size=2)
    thick = int(rng.integers(1, 3))
    if kind == 0:  # straight line
        q = p + rng.normal(0, (hi - lo) * 0.4, size=2)
        cv2.line(alpha, tuple(_fix(p)), tuple(_fix(q)), 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == 1:  # scribble (random walk)
        steps = rng.normal(0, (hi - lo) * 0.08, size=(int(rng.integers(4, 10)), 2))
        pts = _fix(p + np.cumsum(steps, axis=0))
        cv2.polylines(alpha, [pts], False, 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == 2:  # elongated blob (never circle-like)
        b = rng.uniform(1.5, (hi - lo) * 0.06)
        axes = (int(b * rng.uniform(2.5, 5.0) * _ONE), int(b * _ONE))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(alpha, tuple(_fix(p)), axes, ang, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    elif kind == 3:  # open arc
        ax = int(rng.uniform(4, (hi - lo) * 0.2) * _ONE)
        axes = (ax, int(ax * rng.uniform(0.5, 1.0)))
        start = float(rng.uniform(0, 360))
        span = float(rng.uniform(60, 200))
        center = tuple(_fix(p))
        cv2.ellipse(alpha, center, axes, start, 0, span, 255, thick, cv2.LINE_AA, _SHIFT)
    else:  # a cluster of short specks (dashes)
        for q in p + rng.normal(0, (hi - lo) * 0.08, size=(int(rng.integers(3, 9)), 2)):
            axes = (int(rng.uniform(1.5, 3.0) * _ONE), int(rng.uniform(0.6, 1.0) * _ONE))
            ang = float(rng.uniform(0, 180))
            cv2.ellipse(alpha, tuple(_fix(q)), axes, ang, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    return alpha


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured float32 BGR background: one or two blended patterns with random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def pattern() -> np.ndarray:
        kind = rng.integers(4)
        ang = rng.uniform(0, np.pi)
        u = xx * np.cos(ang) + yy * np.sin(ang)
        v = -xx * np.sin(ang) + yy * np.cos(ang)
        if kind == 0:  # low-frequency noise
            k = int(rng.integers(3, 12))
            grid = rng.random((k, k), dtype=np.float32)
            t = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        elif kind == 1:  # linear gradient
            t = u / max(float(np.abs(u).max()), 1.0)
        elif kind == 2:  # stripes with random sharpness
            t = np.sin(2 * np.pi * u / rng.uniform(4, 32) + rng.uniform(0, 2 * np.pi))
            t = np.clip(t * rng.uniform(1, 6), -1, 1)
        else:  # (rotated) checkerboard
            cell = rng.uniform(3, 24)
            t = (np.floor(u / cell) + np.floor(v / cell)) % 2
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c1, c2 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        return c1 + t[..., None] * (c2 - c1)

    bg = pattern()
    if rng.random() < 0.5:
        w = rng.uniform(0.2, 0.5)
        bg = (1 - w) * bg + w * pattern()
    return bg


def _render_image(seed: int, index: int, image_size: int) -> Tuple[np.ndarray, List[dict]]:
    """Draw image ``index`` of a dataset; return (uint8 BGR image, list of {bbox, category_id})."""
    rng = np.random.default_rng([seed, index])
    s = image_size
    pad = int(round(0.3 * s))  # masks live on a padded canvas so shapes may cross the border
    size = s + 2 * pad
    canvas = _background(rng, s)

    def composite(alpha: np.ndarray, colour: np.ndarray, shade: float = 0.0) -> None:
        alpha = alpha[pad : pad + s, pad : pad + s]
        x, y, w, h = cv2.boundingRect(alpha)
        if w == 0 or h == 0:
            return
        a = alpha[y : y + h, x : x + w].astype(np.float32)[..., None] * (1.0 / 255.0)
        col = colour.astype(np.float32)
        if shade:  # linear brightness gradient across the object
            if rng.random() < 0.5:
                col = col + np.linspace(-shade, shade, h, dtype=np.float32)[:, None, None]
            else:
                col = col + np.linspace(-shade, shade, w, dtype=np.float32)[None, :, None]
        roi = canvas[y : y + h, x : x + w]
        roi += a * (col - roi)

    n_clutter = int(rng.integers(2, 9))
    n_under = int(rng.binomial(n_clutter, 0.7))
    for _ in range(n_under):
        composite(_clutter_alpha(rng, size, pad, pad + s), rng.uniform(0, 255, 3))

    n_obj = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    objects = []
    log_lo, log_hi = math.log(MIN_SHAPE_SIZE), math.log(MAX_SHAPE_FRACTION * s)
    for _ in range(n_obj):
        cls_id = int(rng.integers(len(KD_SHAPES_CLASSES)))
        r = 0.5 * math.exp(rng.uniform(log_lo, log_hi))
        cx, cy = pad + rng.uniform(0.4 * r, s - 0.4 * r, size=2)
        alpha = _shape_alpha(rng, KD_SHAPES_CLASSES[cls_id], size, cx, cy, r)
        mask = alpha >= 128
        visible_now = mask[pad : pad + s, pad : pad + s]
        if np.count_nonzero(visible_now) < 4:
            continue
        # random colour, re-sampled a few times to contrast with what lies underneath
        under = canvas[visible_now].mean(axis=0)
        colours = rng.uniform(0, 255, size=(8, 3))
        dist = np.linalg.norm(colours - under, axis=1)
        best = int(np.argmax(dist >= 60.0)) if (dist >= 60.0).any() else int(np.argmax(dist))
        composite(alpha, colours[best], shade=float(rng.uniform(0, 30)))
        objects.append((cls_id, mask))

    occluders = []
    for _ in range(n_clutter - n_under):
        alpha = _clutter_alpha(rng, size, pad, pad + s)
        composite(alpha, rng.uniform(0, 255, 3))
        occluders.append(alpha >= 128)

    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (3, 3), 0)
    sigma = np.float32(rng.uniform(2.0, 10.0))
    canvas += sigma * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    inside = np.zeros((size, size), bool)
    inside[pad : pad + s, pad : pad + s] = True

    # visibility: iterate from the top-most object down, accumulating what covers each one
    covered = np.zeros((size, size), bool)
    for occ in occluders:
        covered |= occ
    annos = []
    for cls_id, mask in reversed(objects):
        visible = np.count_nonzero(mask & inside & ~covered) / np.count_nonzero(mask)
        covered |= mask
        if visible < MIN_VISIBLE_FRACTION:
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 - pad, s)
        y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 - pad, s)
        w, h = x1 - x0, y1 - y0
        if w >= 1 and h >= 1:
            box = [x0, y0, w, h]
            annos.append({"category_id": cls_id + 1, "bbox": box, "area": w * h, "iscrowd": 0})
    annos.reverse()
    return image, annos


def _info(split: str, num_images: int, image_size: int, seed: int) -> dict:
    return {
        "description": "kd_shapes synthetic detection dataset",
        "generator": "kd_det2.data.shapes",
        "version": GENERATOR_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
    }


def _is_complete(json_path: str, image_root: str, info: dict) -> bool:
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    old = data.get("info", {})
    if any(old.get(k) != info[k] for k in ("num_images", "image_size", "seed", "version")):
        return False
    return all(os.path.isfile(os.path.join(image_root, im["file_name"])) for im in data["images"])


def _atomic_write(path: str, payload: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def generate_kd_shapes(
    root: str, split: str, num_images: int, image_size: int = 128, seed: int = 0
) -> str:
    """Generate one split of the synthetic dataset; return the path of its COCO json.

    Images go to ``{root}/{split}/images/{index:06d}.png`` and the COCO json to
    ``{root}/{split}.json`` (category ids 1..6 in :data:`KD_SHAPES_CLASSES` order). Same
    arguments give byte-identical files. If the json already exists, records the same
    (num_images, image_size, seed, generator version) and all its images exist, nothing is
    written. The json is written atomically and last, so an interrupted run regenerates.
    """
    json_path = os.path.join(root, f"{split}.json")
    image_root = os.path.join(root, split, "images")
    info = _info(split, num_images, image_size, seed)
    if _is_complete(json_path, image_root, info):
        return json_path
    logger.info("Generating kd_shapes split '%s' (%d images) in %s", split, num_images, root)
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, annos = _render_image(seed, index, image_size)
        file_name = f"{index:06d}.png"
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError(f"PNG encoding failed for image {index}")
        _atomic_write(os.path.join(image_root, file_name), buf.tobytes())
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for a in annos:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(KD_SHAPES_CLASSES)]
    data = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    _atomic_write(json_path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
    return json_path


def default_root() -> str:
    """Default dataset root: $KD_DET2_DATASETS, else $DETECTRON2_DATASETS/kd_shapes."""
    env = os.environ.get("KD_DET2_DATASETS")
    if env:
        return env
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "kd_shapes")


def register_kd_shapes_split(
    name: str, root: str, split: str, num_images: int, image_size: int = 128, seed: int = 0
) -> None:
    """Lazily register one generated split under ``name`` (no-op if already registered)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    if name in DatasetCatalog.list():
        return
    kwargs = dict(root=root, split=split, num_images=num_images, image_size=image_size, seed=seed)
    json_file = os.path.join(root, f"{split}.json")
    image_root = os.path.join(root, split, "images")

    def load() -> List[dict]:
        generate_kd_shapes(**kwargs)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(KD_SHAPES_CLASSES),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(KD_SHAPES_CLASSES))},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
    _REGISTERED[name] = kwargs


def register_kd_shapes(root: Optional[str] = None) -> None:
    """Register kd_shapes_{train,val,mini_train,mini_val} lazily (nothing is generated here).

    ``root`` defaults to :func:`default_root`. Already registered names are skipped.
    """
    root = root if root is not None else default_root()
    for name, (split, num_images, seed) in _SPLITS.items():
        register_kd_shapes_split(name, root, split, num_images, seed=seed)


def prepare_dataset(name: str) -> None:
    """Make sure the files of a registered kd_shapes dataset exist; no-op for other names."""
    kwargs = _REGISTERED.get(name)
    if kwargs is not None:
        generate_kd_shapes(**kwargs)


def _preview(json_path: str, image_root: str, out: str, count: int = 16, scale: int = 3) -> None:
    with open(json_path) as f:
        data = json.load(f)
    by_image: Dict[int, List[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    tiles = []
    for im in data["images"][:count]:
        img = cv2.imread(os.path.join(image_root, im["file_name"]))
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        for a in by_image.get(im["id"], []):
            x, y, w, h = (v * scale for v in a["bbox"])
            label = KD_SHAPES_CLASSES[a["category_id"] - 1][:3]
            for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
                cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour, thick)
                cv2.putText(img, label, (x + 2, y + 11), cv2.FONT_HERSHEY_PLAIN, 0.8, colour, thick)
        tiles.append(cv2.copyMakeBorder(img, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255,) * 3))
    cols = int(math.ceil(math.sqrt(len(tiles))))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    cv2.imwrite(out, np.vstack(rows))


def main(argv: Optional[List[str]] = None) -> None:
    """CLI: generate a split and optionally write a preview grid with GT boxes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="dataset root (default: see default_root)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default=None, help="write a preview grid PNG here")
    parser.add_argument("--preview-count", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    root = args.root or default_root()
    json_path = generate_kd_shapes(root, args.split, args.num_images, args.image_size, args.seed)
    logger.info("Dataset json: %s", json_path)
    if args.preview:
        image_root = os.path.join(root, args.split, "images")
        _preview(json_path, image_root, args.preview, args.preview_count)
        logger.info("Preview written to %s", args.preview)


if __name__ == "__main__":
    main()
