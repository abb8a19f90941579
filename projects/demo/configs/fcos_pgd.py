"""LazyConfig twin of projects/demo/fcos_R_18_pgd.yaml.

Demo PGD: the demo teacher (FCOS R18-FPN128, 4-conv towers) distilled into the demo student (FCOS
R18-FPN64, 2-conv towers) with PGD on the first block of both towers (1x1 adapters, 64 -> 128),
the official FCOS loss weights and K = 9 (a 128 px image has only 341 locations over P3-P7).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransformLinear

from kd_det2.modeling.distillers import PGD
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
)
model.distillers = L(OrderedDict)(
    PGD=L(PGD)(
        num_classes=6,
        num_anchors=1,
        student_channels={"cls": 64, "reg": 64},
        teacher_channels={"cls": 128, "reg": 128},
        box2box_transform=L(Box2BoxTransformLinear)(normalize_by_size=True),
        level_weights=[1.0, 1.25, 1.5, 1.75, 2.0],
        topk=9,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_pgd"
