"""LazyConfig twin of projects/demo/fcos_R_18_fitnet.yaml.

Demo KD: the demo teacher (FCOS R18-FPN, 128 channels, 4-conv towers, trained by
projects/demo/fcos_R_18_FPN128_teacher.yaml or its twin here) distilled into the demo student (FCOS
R18-FPN, 64 channels) with FitNet on P3-P7 (1x1 adapters, 64 -> 128) and sigmoid logit KD (T=2).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import FitNet, LogitKD
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
)
# A LazyCall (not a plain dict): instantiate() only builds what is inside mappings with a _target_.
model.distillers = L(OrderedDict)(
    FitNet=L(FitNet)(
        in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 128 for f in _LEVELS},
        loss_weight=1.0,
    ),
    LogitKD=L(LogitKD)(num_classes=6, temperature=2.0, loss_weight=1.0),
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_fitnet"
