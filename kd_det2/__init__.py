"""kd_det2: knowledge distillation of object detectors, as a Detectron2 extension.

Importing the package registers its meta-architectures, detectors, distillers and datasets.
"""

from . import data  # noqa: F401  (registers kd_shapes_* and, when found, bccd_*)
from . import modeling  # noqa: F401
from .config import add_kd_config, get_kd_cfg

__version__ = "0.1.0"
__all__ = ["add_kd_config", "get_kd_cfg", "__version__"]
