"""LazyConfig twin of projects/demo/fcos_fitnet.yaml.

Demo KD baseline: the demo teacher (FCOS, EfficientNet-Lite2) distilled into the demo student
(FCOS, MobileNetV2, neck and head inherited; fcos_student.py) with FitNet feature imitation on
P3-P7 (equal widths, 64 channels: no adapter) and sigmoid logit KD (T 2).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import FitNet, LogitKD

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

# A LazyCall (not a plain dict): instantiate() only builds what is inside mappings with a _target_.
model.distillers = L(OrderedDict)(
    FitNet=L(FitNet)(
        in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 64 for f in _LEVELS},
        loss_weight=1.0,
    ),
    LogitKD=L(LogitKD)(num_classes=6, temperature=2.0, loss_weight=1.0),
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_fitnet"
