"""LazyConfig twin of projects/demo/gfl_teacher.yaml (+ Base-Shapes-GFL.yaml).

Demo LD teacher: GFL with the backbone, neck, data, solver and schedule of the FCOS demo teacher
(fcos_teacher.py: ImageNet-pretrained EfficientNet-Lite2, 64-channel FPN with P6/P7 from P5, RGB
input, 400 iterations) and 2-conv GN towers.

    python tools/lazyconfig_train_net.py --config-file projects/demo/configs/gfl_teacher.py
"""

from detectron2.layers import ShapeSpec

from ...LD.configs.common.gfl import model
from .fcos_teacher import dataloader, lr_multiplier  # noqa: F401
from .fcos_teacher import model as _fcos
from .fcos_teacher import optimizer, train  # noqa: F401

model.backbone = _fcos.backbone  # EfficientNet-Lite2, 64-channel FPN, P6/P7 from P5
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]  # MODEL.GFL.NUM_CONVS: 2
model.num_classes = 6
model.pixel_mean = _fcos.pixel_mean
model.pixel_std = _fcos.pixel_std
model.input_format = "RGB"

train.output_dir = "output/demo/teacher_gfl"
