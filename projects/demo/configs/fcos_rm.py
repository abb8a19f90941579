"""LazyConfig twin of projects/demo/fcos_R_18_rm.yaml.

Demo RM: the demo teacher (FCOS R18-FPN128, 4-conv towers) distilled into the demo student (FCOS
R18-FPN64, 2-conv towers) with rank mimicking of the GT-class and centerness logits over each GT's
positives (tau 1, weight 4; not tuned at demo scale yet).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import RM
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=6, loss_weight=4.0, quality="ctrness", quality_weight=1.0)
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_rm"
