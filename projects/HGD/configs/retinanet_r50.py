"""LazyConfig twin of projects/HGD/retinanet_r50.yaml.

HGD on COCO with RetinaNet R101-FPN 3x (detectron2 model zoo) -> R50-FPN 1x, as docs/HGD.md
interprets it: res2-res5 (added to both models' outputs; the FPNs read res3-res5) and P3-P7 paired
by stride, identity-initialised adapters (equal widths), instance-balanced micro weights, adaptive
macro weights; res2 trains (freeze_at 1).

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/HGD/configs/retinanet_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import HGD

from ...Baselines.configs.retinanet_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

_STAGES = ["res2", "res3", "res4", "res5"]
# tap -> (channels, stride); ResNet-50 and ResNet-101 have the same widths
_TAPS = {
    "backbone": {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)},
    "neck": {f"p{i}": (256, 2**i) for i in range(3, 8)},
}

model.student.backbone.bottom_up.out_features = _STAGES
model.student.backbone.bottom_up.freeze_at = 1
model.teacher.opts = ["MODEL.RESNETS.OUT_FEATURES", str(_STAGES)]
model.distillers = L(OrderedDict)(
    HGD=L(HGD)(
        student_taps=_TAPS,
        teacher_taps=_TAPS,
        teacher_stage_order=_STAGES,
        loss_weight=1.0,
        macro="adaptive",
        cross_forward=False,
    )
)

train.output_dir = "output/HGD/retinanet_r50"
