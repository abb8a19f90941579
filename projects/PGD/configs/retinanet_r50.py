"""LazyConfig twin of projects/PGD/retinanet_r50.yaml.

PGD on COCO with RetinaNet R101-FPN 3x (detectron2 model zoo) -> R50-FPN 1x: weights per anchor,
max over a location's 9 anchors, ATSS-like values K 9, alpha 0.08, beta 0.04, gamma 0.128 (our
interpretation; PGD's official configs cover one-anchor heads only). No gradient clipping here,
unlike the yaml (detectron2's LazyConfig trainer has no clipping option).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransform

from kd_det2.modeling.distillers import PGD
from kd_det2.modeling.teacher import build_kd_model

from ...Baselines.configs.retinanet_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.distillers = L(OrderedDict)(
    PGD=L(PGD)(
        num_classes=80,
        num_anchors=9,
        student_channels={"cls": 256, "reg": 256},
        teacher_channels={"cls": 256, "reg": 256},
        box2box_transform=L(Box2BoxTransform)(weights=(1.0, 1.0, 1.0, 1.0)),
        level_weights=[1.0, 1.25, 1.5, 1.75, 2.0],
        topk=9,
        temperature=0.8,
        alpha=0.08,
        beta=0.04,
        gamma=0.128,
        delta=8e-4,
    )
)
model._target_ = build_kd_model
model.meta_arch = "KDDenseDetector"
model.init_student_from_teacher = True
model.init_student_skip = ["backbone.bottom_up."]

train.output_dir = "output/PGD/retinanet_r50"
