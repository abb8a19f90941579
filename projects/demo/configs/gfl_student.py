"""LazyConfig twin of projects/demo/gfl_student.yaml.

Demo GFL student, trained alone through the KD wrapper (no distiller, no teacher forward): GFL with
the backbone of the FCOS demo student (ImageNet-pretrained MobileNetV2, RGB input) and the neck and
head of the demo GFL teacher (gfl_teacher.py), whose weights it starts from, with the wrapper,
data, solver and schedule (300 iterations) of fcos_student.py.
"""

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from .gfl_teacher import model as _gfl

_gfl.backbone = model.student.backbone  # MobileNetV2, 64-channel FPN, P6/P7 from P5
_gfl.pixel_mean = model.student.pixel_mean
_gfl.pixel_std = model.student.pixel_std
model.student = _gfl
model.teacher.config_file = "projects/demo/gfl_teacher.yaml"
model.teacher.weights = "output/demo/teacher_gfl/model_final.pth"

train.output_dir = "output/demo/student_gfl"
