"""LazyConfig twin of projects/demo/gfl_R_18_gkd.yaml.

Demo GKD: the demo GFL teacher (R18-FPN128, 4-conv towers) distilled into the demo GFL student
(R18-FPN64, 2-conv towers) by gradient-guided importance maps on P3-P7 against the GT, beta 0.5,
BMFI off.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import GKD
from kd_det2.modeling.teacher import build_teacher_model

from .gfl_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/gfl_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_gfl_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    GKD=L(GKD)(
        in_features=LEVELS,
        student_channels={f: 64 for f in LEVELS},
        teacher_channels={f: 128 for f in LEVELS},
        beta=0.5,
        cam_target="gt",
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_R_18_gkd"
