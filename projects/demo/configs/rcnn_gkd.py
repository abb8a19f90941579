"""LazyConfig twin of projects/demo/rcnn_gkd.yaml.

Demo two-stage GKD: the demo Faster R-CNN teacher (EfficientNet-Lite2) distilled into the demo
Faster R-CNN student (MobileNetV2, neck and heads inherited; rcnn_student.py) by gradient-guided
importance maps on P2-P5 against the GT (RPN on the student's sampled anchors + RoI heads on its
sampled proposals), beta 0.01 (the official COCO Faster R-CNN value), BMFI off.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import GKD

from .rcnn_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p2", "p3", "p4", "p5"]

model.distillers = L(OrderedDict)(
    GKD=L(GKD)(
        in_features=_LEVELS,
        student_channels={f"p{i}": 64 for i in range(2, 7)},
        teacher_channels={f"p{i}": 64 for i in range(2, 7)},
        two_stage=True,
        beta=0.01,
        cam_target="gt",
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_rcnn_gkd"
