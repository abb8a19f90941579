"""Models: detectors, KD meta-architectures, distillers."""

from . import backbones  # noqa: F401  (registers MobileNetV2 / EfficientNet-Lite backbones)
from . import detectors  # noqa: F401  (registers FCOS, GFL and the FCOS backbone)
from .distillers import KD_DISTILLER_REGISTRY, Distiller, build_distillers, registered_distillers
from .meta_arch import KDDenseDetector, KDGeneralizedRCNN, KDMetaArchBase
from .outputs import DetectorOutputs, ModelSpec
from .recorders import ForwardRecorder
from .teacher import build_teacher

__all__ = [
    "KD_DISTILLER_REGISTRY",
    "Distiller",
    "DetectorOutputs",
    "ForwardRecorder",
    "KDDenseDetector",
    "KDGeneralizedRCNN",
    "KDMetaArchBase",
    "ModelSpec",
    "build_distillers",
    "build_teacher",
    "registered_distillers",
]
