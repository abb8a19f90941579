"""LazyConfig twin of projects/demo/fcos_R_18_hgd.yaml.

Demo HGD, as docs/HGD.md interprets it: the demo teacher (FCOS R18-FPN, 128 channels, 4-conv
towers) distilled into the demo student (FCOS R18-FPN, 64 channels) on res2-res5 (added to both
models' outputs; identity-initialised adapters) and P3-P7 (1x1 adapters, 64 -> 128), with
instance-balanced micro weights and adaptive macro weights.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import HGD
from kd_det2.modeling.teacher import build_teacher_model

from .fcos_R_18_student import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_STAGES = ["res2", "res3", "res4", "res5"]
# tap -> (channels, stride): ResNet-18 stages, then the FPN levels (64 student, 128 teacher)
_R18 = {"res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)}

model.student.backbone.bottom_up.out_features = _STAGES
model.teacher = L(build_teacher_model)(
    config_file="projects/demo/fcos_R_18_FPN128_teacher.yaml",
    weights="output/demo/teacher_fcos_R_18_FPN128/model_final.pth",
    opts=["MODEL.RESNETS.OUT_FEATURES", str(_STAGES)],
)
model.distillers = L(OrderedDict)(
    HGD=L(HGD)(
        student_taps={"backbone": _R18, "neck": {f"p{i}": (64, 2**i) for i in range(3, 8)}},
        teacher_taps={"backbone": _R18, "neck": {f"p{i}": (128, 2**i) for i in range(3, 8)}},
        teacher_stage_order=_STAGES,
        loss_weight=1.0,
    )
)
model.warmup_iters = 50

train.output_dir = "output/demo/kd_fcos_R_18_hgd"
