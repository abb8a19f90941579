"""LazyConfig twin of projects/PGD/fcos_r50.yaml.

PGD on COCO: FCOS R101-FPN 3x teacher -> FCOS R50-FPN 1x student with the official FCOS settings
(xi 0.8 / 0.6, K 30, T 0.8, alpha 0.04, beta 0.02, gamma 0.064, delta 8e-4, cls level weights
1.0 -> 2.0) and the student's neck and head initialised from the teacher.

    python tools/lazyconfig_train_net.py --config-file projects/PGD/configs/fcos_r50.py --num-gpus 8

Unlike the yaml (SOLVER.CLIP_GRADIENTS), this twin does not clip gradients: detectron2's
LazyConfig trainer has no clipping option.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransformLinear

from kd_det2.modeling.distillers import PGD
from kd_det2.modeling.teacher import build_kd_model

from ...Baselines.configs.fcos_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.distillers = L(OrderedDict)(
    PGD=L(PGD)(
        num_classes=80,
        num_anchors=1,
        student_channels={"cls": 256, "reg": 256},
        teacher_channels={"cls": 256, "reg": 256},
        # the teacher's own transform (FCOS: distances to the point, normalised by the stride)
        box2box_transform=L(Box2BoxTransformLinear)(normalize_by_size=True),
        level_weights=[1.0, 1.25, 1.5, 1.75, 2.0],
        xi_cls=0.8,
        xi_reg=0.6,
        topk=30,
        temperature=0.8,
        alpha=0.04,
        beta=0.02,
        gamma=0.064,
        delta=8e-4,
    )
)
# The same KD wrapper, built through build_kd_model to copy the teacher's neck and head into the
# student once both exist (MODEL.KD.INIT_STUDENT_FROM_TEACHER in yacs).
model._target_ = build_kd_model
model.meta_arch = "KDDenseDetector"
model.init_student_from_teacher = True
model.init_student_skip = ["backbone.bottom_up."]

train.output_dir = "output/PGD/fcos_r50"
