"""LazyConfig twin of projects/demo/fcos_R_18_student.yaml.

Demo student, trained alone through the KD wrapper (no teacher, no distiller): FCOS R18-FPN
(64 channels), otherwise as the demo teacher (data, solver, schedule).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from kd_det2.modeling.meta_arch import KDDenseDetector

from .fcos_R_18_FPN128_teacher import _schedule, dataloader, model, optimizer, train  # noqa: F401

# The teacher's FCOS (ResNet-18) with a 64-channel FPN and 2-conv towers.
_student = model
_student.backbone.out_channels = 64
_student.head.input_shape = [ShapeSpec(channels=64)] * 5
_student.head.conv_dims = [64, 64]

model = L(KDDenseDetector)(student=_student, teacher=None, distillers={}, warmup_iters=0)

train.output_dir = "output/demo/student_fcos_R_18"
train.max_iter = 200
lr_multiplier = _schedule(200)
