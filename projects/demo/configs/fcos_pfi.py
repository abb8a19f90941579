"""LazyConfig twin of projects/demo/fcos_pfi.yaml.

Demo PFI: the demo teacher (FCOS, EfficientNet-Lite2) distilled into the demo student (FCOS,
MobileNetV2, neck and head inherited; fcos_student.py) with prediction-guided imitation of P3-P7
(equal widths, 64 channels: no adapter; detached weight map divided by its level mean). Weight
1.5 as the COCO config; not tuned at demo scale.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 64 for f in _LEVELS},
        loss_weight=1.5,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_pfi"
