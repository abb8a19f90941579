"""LazyConfig twin of projects/demo/fcos_R_18_pfi.yaml.

Demo PFI: the demo teacher (FCOS R18-FPN128) distilled into the demo student (FCOS R18-FPN64) with
prediction-guided imitation of P3-P7 (1x1 adapters 64 -> 128; detached weight map divided by its
level mean; weight 1.5, not tuned at demo scale yet).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 128 for f in _LEVELS},
        loss_weight=1.5,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_pfi"
