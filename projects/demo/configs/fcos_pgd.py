"""LazyConfig twin of projects/demo/fcos_pgd.yaml.

Demo PGD: the demo teacher (FCOS, EfficientNet-Lite2) distilled into the demo student (FCOS,
MobileNetV2, neck and head inherited; fcos_student.py) with PGD on the first block of both towers
(equal widths, 64 channels: no adapter), the official FCOS loss weights except ALPHA (the
foreground feature term), 0.0004 instead of 0.04 (see the yaml), and K = 9 instead of 30 (a 128 px
image has only 341 locations over P3-P7).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L
from detectron2.modeling.box_regression import Box2BoxTransformLinear

from kd_det2.modeling.distillers import PGD

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(
    PGD=L(PGD)(
        num_classes=6,
        num_anchors=1,
        student_channels={"cls": 64, "reg": 64},
        teacher_channels={"cls": 64, "reg": 64},
        box2box_transform=L(Box2BoxTransformLinear)(normalize_by_size=True),
        level_weights=[1.0, 1.25, 1.5, 1.75, 2.0],
        topk=9,
        alpha=0.0004,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_pgd"
