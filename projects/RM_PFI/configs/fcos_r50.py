"""LazyConfig twin of projects/RM_PFI/fcos_r50.yaml.

RM + PFI on COCO: FCOS R101-FPN 3x teacher (projects/teachers/FCOS_R_101_FPN_3x.yaml) -> FCOS
R50-FPN 1x. RM on the GT-class logits and on the centerness logits (weight 4), PFI on P3-P7
(weight 1.5); see docs/RM_PFI.md.

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/RM_PFI/configs/fcos_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI, RM

from ...Baselines.configs.fcos_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=80, loss_weight=4.0, quality="ctrness", quality_weight=1.0),
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 256 for f in _LEVELS},
        teacher_channels={f: 256 for f in _LEVELS},
        loss_weight=1.5,
    ),
)

train.output_dir = "output/RM_PFI/fcos_r50"
