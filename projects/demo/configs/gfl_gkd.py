"""LazyConfig twin of projects/demo/gfl_gkd.yaml.

Demo GKD: the demo GFL teacher (EfficientNet-Lite2) distilled into the demo GFL student
(MobileNetV2, neck and head inherited; gfl_student.py) by gradient-guided importance maps on P3-P7
against the GT, beta 0.5, BMFI off.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import GKD

from .gfl_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    GKD=L(GKD)(
        in_features=LEVELS,
        student_channels={f: 64 for f in LEVELS},
        teacher_channels={f: 64 for f in LEVELS},
        beta=0.5,
        cam_target="gt",
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_gkd"
