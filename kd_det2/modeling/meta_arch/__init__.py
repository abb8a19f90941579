"""KD meta-architectures, registered in detectron2's ``META_ARCH_REGISTRY``."""

from .base import KDMetaArchBase, init_student_from_teacher
from .dense import KDDenseDetector
from .rcnn import KDGeneralizedRCNN

__all__ = ["KDMetaArchBase", "KDDenseDetector", "KDGeneralizedRCNN", "init_student_from_teacher"]
