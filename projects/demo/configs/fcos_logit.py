"""LazyConfig twin of projects/demo/fcos_R_18_logit.yaml.

Demo soft-label KD alone: the demo teacher (FCOS R18-FPN128) distilled into the demo student (FCOS
R18-FPN64) with sigmoid logit KD (T 2) over all locations, the baseline of rank mimicking.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import LogitKD
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    LogitKD=L(LogitKD)(num_classes=6, temperature=2.0, loss_weight=1.0)
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_logit"
