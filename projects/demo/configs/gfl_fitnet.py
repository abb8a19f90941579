"""LazyConfig twin of projects/demo/gfl_R_18_fitnet.yaml.

Demo feature-imitation baseline on GFL: FitNet on P3-P7 (1x1 adapters, 64 -> 128 channels) from
the demo GFL teacher into the demo GFL student.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import FitNet
from kd_det2.modeling.teacher import build_teacher_model

from .gfl_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]
model.teacher = L(build_teacher_model)(
    config_file="projects/demo/gfl_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_gfl_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    FitNet=L(FitNet)(
        in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 128 for f in _LEVELS},
        loss_weight=1.0,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_R_18_fitnet"
