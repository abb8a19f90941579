"""LazyConfig twin of projects/demo/gfl_R_18_FPN128_teacher.yaml (+ Base-Shapes-GFL.yaml).

Demo LD teacher: plain GFL R18-FPN with 128 channels and 4-conv towers on kd_shapes, with the data,
solver and schedule of the FCOS demo teacher (360 iterations).

    python tools/lazyconfig_train_net.py \
        --config-file projects/demo/configs/gfl_R_18_FPN128_teacher.py
"""

from detectron2.layers import ShapeSpec

from ...LD.configs.common.gfl import model
from .fcos_R_18_FPN128_teacher import _schedule, dataloader, lr_multiplier  # noqa: F401
from .fcos_R_18_FPN128_teacher import model as _fcos
from .fcos_R_18_FPN128_teacher import optimizer, train  # noqa: F401

model.backbone = _fcos.backbone  # R18, BN, 128-channel FPN, P6/P7 from P5
model.head.input_shape = [ShapeSpec(channels=128)] * 5
model.head.conv_dims = [128] * 4  # MODEL.GFL.NUM_CONVS: 4
model.num_classes = 6
model.pixel_std = [57.375, 57.120, 58.395]

train.output_dir = "output/demo/teacher_gfl_R_18_FPN128"
