"""LazyConfig twin of projects/LD/gfl_r18.yaml.

LD on COCO: GFL R101-FPN 2x teacher -> GFL R18-FPN 1x student, as gfl_r34.py (torchvision's
resnet18, converted).
"""

from .gfl_r34 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.student.backbone.bottom_up.stages.depth = 18

train.init_checkpoint = "output/pretrained/R-18.pkl"
train.output_dir = "output/LD/gfl_r18"
