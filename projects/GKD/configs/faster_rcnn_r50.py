"""LazyConfig twin of projects/GKD/faster_rcnn_r50.yaml.

GKD on COCO with Faster R-CNN R101-FPN 3x (detectron2 model zoo) -> R50-FPN 1x: gradient-guided
maps on P2-P5 against the GT (RPN on the student's sampled anchors + RoI heads on its sampled
proposals), beta 0.01, BMFI off, the student's neck and heads initialised from the teacher; see
docs/GKD.md.

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/GKD/configs/faster_rcnn_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import GKD
from kd_det2.modeling.teacher import build_kd_model

from ...Baselines.configs.faster_rcnn_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

_LEVELS = ["p2", "p3", "p4", "p5"]

model.distillers = L(OrderedDict)(
    GKD=L(GKD)(
        in_features=_LEVELS,
        student_channels={f"p{i}": 256 for i in range(2, 7)},
        teacher_channels={f"p{i}": 256 for i in range(2, 7)},
        two_stage=True,
        beta=0.01,
        cam_target="gt",
        absolute=True,
        differentiable=True,
    )
)
model._target_ = build_kd_model
model.meta_arch = "KDGeneralizedRCNN"
model.init_student_from_teacher = True
model.init_student_skip = ["backbone.bottom_up."]

train.output_dir = "output/GKD/faster_rcnn_r50"
