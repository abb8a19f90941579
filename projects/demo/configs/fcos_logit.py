"""LazyConfig twin of projects/demo/fcos_logit.yaml.

Demo soft-label KD alone: the demo teacher (FCOS, EfficientNet-Lite2) distilled into the demo
student (FCOS, MobileNetV2, neck and head inherited; fcos_student.py) with sigmoid logit KD (T 2)
over all locations, the baseline of rank mimicking (fcos_rm.py).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import LogitKD

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(
    LogitKD=L(LogitKD)(num_classes=6, temperature=2.0, loss_weight=1.0)
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_logit"
