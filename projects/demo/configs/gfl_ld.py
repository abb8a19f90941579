"""LazyConfig twin of projects/demo/gfl_ld.yaml.

Demo LD: the demo GFL teacher (EfficientNet-Lite2) distilled into the demo GFL student
(MobileNetV2, neck and head inherited; gfl_student.py) with the paper's full recipe ("Main KD +
Main LD + VLR LD") and the official GFL weights: main LD 0.25 (tau 10), VLR LD 0.25, class KD 10
(T 2).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import LD

from .gfl_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(
    LD=L(LD)(
        loss_weight_main=0.25,
        temperature=10.0,
        loss_weight_vlr=0.25,
        loss_weight_kd=10.0,
        kd_temperature=2.0,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_gfl_ld"
