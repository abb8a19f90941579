"""Checks shared by the dataset loaders: image files, boxes, and the errors they raise.

Image check (:func:`check_image`), done once per file and process (memoised on the file's path,
size and modification time):

* the header must be readable by PIL (format and size known);
* JPEG: the end-of-image marker (``FF D9``) must be among the last 1 KiB; when it is not (a
  truncated file, or a valid file with a long trailer), the image is fully decoded and rejected
  only if decoding fails;
* PNG: ``PIL.Image.verify`` (chunk CRCs up to ``IEND``; reads the file without decoding it);
* other formats: a full decode.

The size returned is the one detectron2's ``read_image`` will see, i.e. after the EXIF
orientation (width and height swapped for orientations 5-8).
"""

import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

__all__ = [
    "DatasetError",
    "check_image",
    "check_images",
    "clip_box",
    "file_list_message",
    "log_once",
]

_EXIF_ORIENTATION = 274
_JPEG_TAIL = 1024
_IMAGE_CACHE: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = {}  # path -> (stamp, (w, h))
_LOGGED: Set[Tuple[str, str]] = set()


class DatasetError(ValueError):
    """Invalid dataset files; the message names the file(s) and what is wrong."""


def file_list_message(noun: str, paths: Sequence[str], suffix: str = "", limit: int = 5) -> str:
    """``"{count} {noun}(s){suffix}: a, b, c (and N more)"``, listing at most ``limit`` paths."""
    shown = ", ".join(str(p) for p in paths[:limit])
    more = f" (and {len(paths) - limit} more)" if len(paths) > limit else ""
    plural = "" if len(paths) == 1 else "s"
    return f"{len(paths)} {noun}{plural}{suffix}: {shown}{more}"


def log_once(log: logging.Logger, key: Tuple[str, str], level: int, msg: str, *args) -> None:
    """Log ``msg`` at ``level`` the first time ``key`` is seen in this process, else at DEBUG.

    For per-dataset summaries (skipped boxes, negative images) that would otherwise be repeated
    each time a dataset is loaded (train loader, evaluator, ...).
    """
    log.log(logging.DEBUG if key in _LOGGED else level, msg, *args)
    _LOGGED.add(key)


def _orientation(im) -> Optional[int]:
    """EXIF orientation, read without decoding the image (for PNG, from an eXIf chunk before the
    image data); None when absent or malformed (detectron2 then ignores it too)."""
    from PIL import Image

    try:
        if im.format == "PNG":
            exif = Image.Exif()
            if not im.info.get("exif"):
                return None
            exif.load(im.info["exif"])
        else:
            exif = im.getexif()
        return exif.get(_EXIF_ORIENTATION)
    except Exception:
        return None


def _check_complete(im, path: str) -> None:
    if im.format == "JPEG":
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - _JPEG_TAIL, 0))
            if b"\xff\xd9" in f.read():
                return
    elif im.format == "PNG":
        im.verify()
        return
    im.load()


def check_image(path: str) -> Tuple[int, int]:
    """Check that ``path`` is a complete, readable image; return its (width, height).

    See the module docstring for what is checked. Raises :class:`DatasetError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        st = os.stat(path)
    except OSError as e:
        raise DatasetError(f"image {path} cannot be read: {e.strerror or e}") from e
    stamp = (st.st_size, st.st_mtime_ns)
    cached = _IMAGE_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = _orientation(im)
            _check_complete(im, path)
    except UnidentifiedImageError as e:
        raise DatasetError(
            f"image {path} is not recognised by PIL (not an image, or cut inside its header)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"image {path} is truncated or corrupt ({e})") from e
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    _IMAGE_CACHE[path] = (stamp, (width, height))
    return width, height


def check_images(paths: Sequence[str], dataset: str) -> List[Tuple[int, int]]:
    """:func:`check_image` on every path; one :class:`DatasetError` lists all the bad files."""
    sizes: List[Tuple[int, int]] = []
    bad: List[str] = []
    for path in paths:
        try:
            sizes.append(check_image(path))
        except DatasetError as e:
            bad.append(str(e))
            sizes.append((0, 0))
    if bad:
        raise DatasetError(f"{dataset}: " + file_list_message("unreadable image", bad))
    return sizes


def clip_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int
) -> Optional[List[float]]:
    """Clip an XYXY box to a ``width`` x ``height`` image; None when it is degenerate.

    Degenerate: a non-finite coordinate, zero or negative extent before clipping, or an extent
    under 1 px after clipping (e.g. a box entirely outside the image).
    """
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return None
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return [x0, y0, x1, y1]
