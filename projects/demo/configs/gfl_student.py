"""LazyConfig twin of projects/demo/gfl_R_18_student.yaml.

Demo GFL student, trained alone through the KD wrapper (no teacher, no distiller): GFL R18-FPN
(64 channels, 2-conv towers), otherwise as the demo GFL teacher, 200 iterations.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from kd_det2.modeling.meta_arch import KDDenseDetector

from .gfl_R_18_FPN128_teacher import _schedule, dataloader, model, optimizer, train  # noqa: F401

_student = model
_student.backbone.out_channels = 64
_student.head.input_shape = [ShapeSpec(channels=64)] * 5
_student.head.conv_dims = [64, 64]

model = L(KDDenseDetector)(student=_student, teacher=None, distillers={}, warmup_iters=0)

train.output_dir = "output/demo/student_gfl_R_18"
train.max_iter = 200
lr_multiplier = _schedule(200)
