"""LazyConfig twin of projects/RM_PFI/retinanet_r50.yaml.

RM + PFI on COCO: RetinaNet R101-FPN 3x teacher (detectron2 model zoo) -> RetinaNet R50-FPN 1x.
Rank mimicking of the GT-class logits over each GT's positive anchors (tau 1, weight 4) and
prediction-guided imitation of P3-P7 (detached, level-mean-normalised weight map; weight 1.5).
The weights are those of the only public attempt (the paper's are unknown): docs/RM_PFI.md.

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/RM_PFI/configs/retinanet_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI, RM

from ...Baselines.configs.retinanet_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=80, loss_weight=4.0, temperature=1.0, score_space="logit"),
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 256 for f in _LEVELS},
        teacher_channels={f: 256 for f in _LEVELS},
        loss_weight=1.5,
        normalize_weight="level_mean",
    ),
)

train.output_dir = "output/RM_PFI/retinanet_r50"
