"""LazyConfig twin of projects/demo/fcos_hgd.yaml.

Demo HGD, as docs/HGD.md interprets it: the demo teacher (FCOS, EfficientNet-Lite2) distilled into
the demo student (FCOS, MobileNetV2, neck and head inherited; fcos_student.py) on stage3-stage5
(1x1 adapters, MobileNetV2 32/96/1280 -> Lite2 48/120/352 channels; stage2 is frozen in the
student, so its ``out_features`` leave it out) and P3-P7 (64 -> 64, identity-initialised
adapters), with instance-balanced micro weights and adaptive macro weights.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import HGD

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

# tap -> (channels, stride): the bottom-up stages of each backbone, then the shared FPN levels
_NECK = {f"p{i}": (64, 2**i) for i in range(3, 8)}
_MOBILENET_V2 = {"stage3": (32, 8), "stage4": (96, 16), "stage5": (1280, 32)}
_LITE2 = {"stage2": (24, 4), "stage3": (48, 8), "stage4": (120, 16), "stage5": (352, 32)}

model.student.backbone.bottom_up.out_features = list(_MOBILENET_V2)
model.distillers = L(OrderedDict)(
    HGD=L(HGD)(
        student_taps={"backbone": _MOBILENET_V2, "neck": _NECK},
        teacher_taps={"backbone": _LITE2, "neck": _NECK},
        teacher_stage_order=list(_LITE2),  # for cross_forward (MODEL.KD.HGD.CROSS_FORWARD)
        loss_weight=1.0,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_hgd"
