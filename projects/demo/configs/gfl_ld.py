"""LazyConfig twin of projects/demo/gfl_R_18_ld.yaml.

Demo LD: the demo GFL teacher (R18-FPN128, 4-conv towers) distilled into the demo GFL student
(R18-FPN64, 2-conv towers), "Main KD + Main LD + VLR LD" with the official GFL weights.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import LD
from kd_det2.modeling.teacher import build_teacher_model

from .gfl_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/gfl_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_gfl_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    LD=L(LD)(
        loss_weight_main=0.25,
        temperature=10.0,
        loss_weight_vlr=0.25,
        loss_weight_kd=10.0,
        kd_temperature=2.0,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_R_18_ld"
