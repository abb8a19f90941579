"""LazyConfig twin of projects/GKD/gfl_r50.yaml.

GKD on COCO: GFL R101-FPN 2x teacher (projects/teachers/GFL_R_101_FPN_2x.yaml) -> GFL R50-FPN 1x.
Gradient-guided maps on P3-P7 against the GT, beta 0.5, BMFI off, the student's neck and head
initialised from the teacher; see docs/GKD.md.

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file projects/GKD/configs/gfl_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import GKD
from kd_det2.modeling.teacher import build_kd_model

from ...LD.configs.gfl_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

model.distillers = L(OrderedDict)(
    GKD=L(GKD)(
        in_features=_LEVELS,
        student_channels={f: 256 for f in _LEVELS},
        teacher_channels={f: 256 for f in _LEVELS},
        beta=0.5,
        cam_target="gt",
        absolute=True,
        differentiable=True,
    )
)
# The same KD wrapper, built through build_kd_model to copy the teacher's neck and head into the
# student once both exist (MODEL.KD.INIT_STUDENT_FROM_TEACHER in yacs).
model._target_ = build_kd_model
model.meta_arch = "KDDenseDetector"
model.init_student_from_teacher = True
model.init_student_skip = ["backbone.bottom_up."]

train.output_dir = "output/GKD/gfl_r50"
