"""LazyConfig twin of projects/LD/gfl_r34.yaml.

LD on COCO: GFL R101-FPN 2x teacher -> GFL R34-FPN 1x student, as gfl_r50.py. The student starts
from torchvision's ImageNet resnet34 converted with detectron2's convert-torchvision-to-d2.py
(RGB input, torchvision's pixel statistics).
"""

from .gfl_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.student.backbone.bottom_up.stages.depth = 34
del model.student.backbone.bottom_up.stages.stride_in_1x1  # basic blocks have no 1x1 conv
model.student.pixel_mean = [123.675, 116.280, 103.530]
model.student.pixel_std = [58.395, 57.120, 57.375]
model.student.input_format = "RGB"
model.student_input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"
dataloader.test.mapper.image_format = "RGB"

train.init_checkpoint = "output/pretrained/R-34.pkl"
train.output_dir = "output/LD/gfl_r34"
