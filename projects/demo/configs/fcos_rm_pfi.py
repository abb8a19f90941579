"""LazyConfig twin of projects/demo/fcos_rm_pfi.yaml.

Demo RM + PFI (the paper's "KD-RP"): the distillers of fcos_rm.py and fcos_pfi.py together (RM 4,
PFI 1.5, the COCO config's weights; not tuned at demo scale).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from .fcos_pfi import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from .fcos_rm import model as _rm

model.distillers = L(OrderedDict)(RM=_rm.distillers.RM, PFI=model.distillers.PFI)

train.output_dir = "output/demo/kd_fcos_rm_pfi"
