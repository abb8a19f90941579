"""LazyConfig twin of projects/RM_PFI/gfl_r50.yaml.

RM + PFI on COCO: GFL R101-FPN 2x teacher (projects/teachers/GFL_R_101_FPN_2x.yaml) -> GFL R50-FPN
1x. RM ranks GFL's joint class-IoU score (its class logit; no separate quality term), weight 4;
PFI on P3-P7, weight 1.5; see docs/RM_PFI.md.

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/RM_PFI/configs/gfl_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI, RM

from ...LD.configs.gfl_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=80, loss_weight=4.0),
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 256 for f in _LEVELS},
        teacher_channels={f: 256 for f in _LEVELS},
        loss_weight=1.5,
    ),
)

train.output_dir = "output/RM_PFI/gfl_r50"
