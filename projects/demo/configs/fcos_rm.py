"""LazyConfig twin of projects/demo/fcos_rm.yaml.

Demo RM: the demo teacher (FCOS, EfficientNet-Lite2) distilled into the demo student (FCOS,
MobileNetV2, neck and head inherited; fcos_student.py) with rank mimicking of the GT-class and
centerness logits over each GT's positives (tau 1). Weight 4 as the COCO config; not tuned at
demo scale.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import RM

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=6, loss_weight=4.0, quality="ctrness", quality_weight=1.0)
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_rm"
