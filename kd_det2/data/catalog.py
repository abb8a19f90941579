"""Dataset names of kd_det2: registered names, and datasets given by their path.

Wherever kd_det2 takes a dataset name (``DATASETS.TRAIN/TEST``, LazyConfig dataloader names,
tools' ``--dataset``), besides a registered name it accepts:

* ``voc:<dir>:<split>``: a Pascal VOC folder and the split ``<dir>/ImageSets/Main/<split>.txt``.
  The split is the text after the LAST ``:``, so ``<dir>`` may contain ``:`` (the split may not).
* ``coco:<json>``: a COCO instances json whose ``file_name`` s are relative to the json's folder;
  ``coco:<json>:<image_root>``: the same with an explicit image folder. The json path ends at
  the first ``.json`` (any case) followed by ``:`` or by the end of the name; what follows that
  ``:`` is the image folder (which may contain ``:``). The json must be named ``*.json``.

Paths are absolute or relative to the current directory, with ``~`` expanded. Such names are
registered in DatasetCatalog/MetadataCatalog on first use (:func:`register_dataset`, idempotent;
the name itself is the key) and checked when first loaded (:func:`prepare_dataset`).
"""

import os
import re
from typing import Iterable, NamedTuple, Optional, Set

from .coco import register_coco
from .shapes import prepare_dataset as prepare_kd_shapes
from .voc import register_voc

__all__ = [
    "DatasetPath",
    "parse_dataset_name",
    "prepare_dataset",
    "prepare_datasets",
    "register_dataset",
]

_PREFIXES = ("voc:", "coco:")
_COCO_NAME = re.compile(r"(.+?\.json)(?::(.*))?", re.IGNORECASE | re.DOTALL)
_LOADED: Set[str] = set()  # path datasets already loaded (checked) in this process


class DatasetPath(NamedTuple):
    """A dataset given by path; all paths absolute."""

    kind: str  #: "voc" or "coco"
    path: str  #: the VOC folder, or the COCO json file
    split: Optional[str] = None  #: VOC: the split's name
    image_root: Optional[str] = None  #: COCO: the folder that image file names are relative to


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def parse_dataset_name(name: str) -> Optional[DatasetPath]:
    """Parse a ``voc:``/``coco:`` dataset name (see the module docstring); None for other names.

    Raises:
        ValueError: a ``voc:``/``coco:`` name that does not follow the syntax.
    """
    if name.startswith("voc:"):
        dirname, sep, split = name[4:].rpartition(":")
        if not sep or not dirname or not split or "/" in split:
            raise ValueError(
                f"dataset name '{name}': expected voc:<dir>:<split>, e.g. "
                "voc:datasets/VOC2007:trainval (the split is the text after the last ':')"
            )
        return DatasetPath("voc", _abs(dirname), split=split)
    if name.startswith("coco:"):
        match = _COCO_NAME.fullmatch(name[5:])
        if match is None or match.group(2) == "":
            raise ValueError(
                f"dataset name '{name}': expected coco:<file.json> or coco:<file.json>:<image "
                "folder>, e.g. coco:datasets/shapes/annotations.json"
            )
        json_file = _abs(match.group(1))
        root = match.group(2)
        return DatasetPath(
            "coco", json_file, image_root=_abs(root) if root else os.path.dirname(json_file)
        )
    return None


def register_dataset(name: str) -> None:
    """Register a ``voc:``/``coco:`` name in this process, unless it is registered already.

    Cheap: checks that the folders and files named exist (and, for VOC without a labels.txt,
    reads the XML files for the class names). Other names are left alone.

    Raises:
        ValueError: a malformed name; :class:`DatasetError` (a ValueError) for missing files.
    """
    from detectron2.data import DatasetCatalog

    if name in DatasetCatalog.list():
        return
    spec = parse_dataset_name(name)
    if spec is None:
        return
    if spec.kind == "voc":
        register_voc(name, spec.path, spec.split)
    else:
        register_coco(name, spec.path, spec.image_root)


def prepare_dataset(name: str) -> None:
    """The one entry point to make dataset ``name`` usable in this process; idempotent.

    * ``voc:``/``coco:`` names are registered (:func:`register_dataset`), then loaded once per
      process so that bad files raise :class:`DatasetError` (naming them) now, before training;
      loading also sets the COCO names' thing_classes.
    * embedded kd_shapes datasets are generated when their files are missing.
    * other registered names (BCCD, detectron2's builtin datasets) are left as they are.

    Raises:
        KeyError: ``name`` is neither registered nor a ``voc:``/``coco:`` name.
        ValueError: a malformed ``voc:``/``coco:`` name; DatasetError for bad files.
    """
    from detectron2.data import DatasetCatalog

    register_dataset(name)
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset '{name}' is not registered; use a registered name (e.g. kd_shapes_val, "
            "bccd_train) or a path: voc:<dir>:<split>, coco:<file.json>[:<image folder>]"
        )
    prepare_kd_shapes(name)
    if name.startswith(_PREFIXES) and name not in _LOADED:
        DatasetCatalog.get(name)
        _LOADED.add(name)


def prepare_datasets(names: Iterable[str]) -> None:
    """:func:`prepare_dataset` for each name, for every process of a distributed job.

    Every process registers the names; the main process alone generates and checks the data,
    then all processes wait for it (other processes load the data themselves when they build
    their data loaders).
    """
    from detectron2.utils import comm

    names = list(dict.fromkeys(names))
    for name in names:
        register_dataset(name)
    if comm.is_main_process():
        for name in names:
            prepare_dataset(name)
    comm.synchronize()
