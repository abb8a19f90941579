"""LazyConfig twin of projects/demo/rcnn_student.yaml.

Demo two-stage student, trained alone through the KD wrapper (no distiller, no teacher forward):
Faster R-CNN with an ImageNet-pretrained MobileNetV2 backbone (FrozenBN, stem + stage2 frozen; RGB
input with ImageNet's mean/std) and the demo Faster R-CNN teacher's neck and heads
(rcnn_teacher.py: FPN, RPN, box head), whose weights it starts from (all but the FPN's lateral 1x1
convs, whose input widths differ; the teacher is dropped after the copy), 300 iterations. The
method configs set ``model.distillers`` on top of it.
"""

from detectron2.config import LazyCall as L

from kd_det2.modeling.backbones import MobileNetV2Backbone
from kd_det2.modeling.teacher import build_kd_model, build_teacher_model

from .fcos_teacher import _schedule
from .rcnn_teacher import dataloader  # noqa: F401
from .rcnn_teacher import model as _student
from .rcnn_teacher import optimizer, train  # noqa: F401

_student.backbone.bottom_up = L(MobileNetV2Backbone)(
    out_features=["stage2", "stage3", "stage4", "stage5"],
    norm="FrozenBN",
    freeze_at=2,
    pretrained="imagenet",
)
_student.pixel_mean = [123.675, 116.28, 103.53]  # ImageNet, RGB, 0-255 units
_student.pixel_std = [58.395, 57.12, 57.375]

model = L(build_kd_model)(
    meta_arch="KDGeneralizedRCNN",
    init_student_from_teacher=True,  # MODEL.KD.INIT_STUDENT_FROM_TEACHER: neck and heads
    init_student_skip=["backbone.bottom_up."],
    student=_student,
    teacher=L(build_teacher_model)(
        config_file="projects/demo/rcnn_teacher.yaml",
        weights="output/demo/teacher_rcnn/model_final.pth",
    ),
    distillers={},
    warmup_iters=0,
    student_input_format="RGB",
    teacher_input_format="RGB",
)

train.output_dir = "output/demo/student_rcnn"
train.max_iter = 300
lr_multiplier = _schedule(300)
