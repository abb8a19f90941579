"""Datasets of kd_det2: the embedded synthetic ``kd_shapes`` dataset, BCCD (VOC layout), and
datasets given by path (``voc:<dir>:<split>``, ``coco:<file.json>[:<image folder>]``).

Importing this package registers (lazily, without generating or reading any file)
kd_shapes_{train,val,mini_train,mini_val} and, when the BCCD folder is found,
bccd_{train,val,test,trainval} in detectron2's DatasetCatalog/MetadataCatalog. Path names are
registered on first use: :func:`prepare_dataset` is the entry point for any dataset name.
"""

from .catalog import (
    DatasetPath,
    parse_dataset_name,
    prepare_dataset,
    prepare_datasets,
    register_dataset,
)
from .checks import DatasetError, check_image
from .coco import load_coco_dicts, register_coco
from .shapes import (
    KD_SHAPES_CLASSES,
    generate_kd_shapes,
    register_kd_shapes,
    register_kd_shapes_split,
)
from .voc import (
    BCCD_CLASSES,
    find_bccd_root,
    load_bccd_dicts,
    load_voc_dicts,
    register_bccd,
    register_voc,
    voc_class_names,
)

__all__ = [
    "BCCD_CLASSES",
    "DatasetError",
    "DatasetPath",
    "KD_SHAPES_CLASSES",
    "check_image",
    "find_bccd_root",
    "generate_kd_shapes",
    "load_bccd_dicts",
    "load_coco_dicts",
    "load_voc_dicts",
    "parse_dataset_name",
    "prepare_dataset",
    "prepare_datasets",
    "register_bccd",
    "register_coco",
    "register_dataset",
    "register_kd_shapes",
    "register_kd_shapes_split",
    "register_voc",
    "voc_class_names",
]

register_kd_shapes()
register_bccd()
