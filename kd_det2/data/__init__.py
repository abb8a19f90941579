"""Datasets of kd_det2: the embedded synthetic ``kd_shapes`` dataset and BCCD (VOC layout).

Importing this package registers (lazily, without generating or reading any file)
kd_shapes_{train,val,mini_train,mini_val} and, when the BCCD folder is found,
bccd_{train,val,test,trainval} in detectron2's DatasetCatalog/MetadataCatalog.
"""

from .shapes import (
    KD_SHAPES_CLASSES,
    generate_kd_shapes,
    prepare_dataset,
    register_kd_shapes,
    register_kd_shapes_split,
)
from .voc import BCCD_CLASSES, load_voc_dicts, register_bccd

__all__ = [
    "KD_SHAPES_CLASSES",
    "BCCD_CLASSES",
    "generate_kd_shapes",
    "prepare_dataset",
    "register_kd_shapes",
    "register_kd_shapes_split",
    "register_bccd",
    "load_voc_dicts",
]

register_kd_shapes()
register_bccd()
