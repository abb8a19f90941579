"""LazyConfig twin of projects/demo/gfl_fitnet.yaml.

Demo feature-imitation baseline on GFL: the demo GFL teacher (EfficientNet-Lite2) distilled into
the demo GFL student (MobileNetV2, neck and head inherited; gfl_student.py) with FitNet on P3-P7
(equal widths, 64 channels: no adapter), the baseline LD is compared with.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from .fcos_fitnet import model as _fcos
from .gfl_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(FitNet=_fcos.distillers.FitNet)  # fcos_fitnet.py's, alone
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_fitnet"
