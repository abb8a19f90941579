"""LazyConfig twin of projects/LD/gfl_r50.yaml.

LD on COCO: GFL R101-FPN 2x teacher (projects/teachers/GFL_R_101_FPN_2x.yaml) -> GFL R50-FPN 1x
student, "Main KD + Main LD + VLR LD" with the official GFL weights (main LD 0.25, tau 10; VLR LD
0.25; class KD 10, T 2), no feature imitation, batch 16, lr 0.01.

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file projects/LD/configs/gfl_r50.py
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import LD
from kd_det2.modeling.meta_arch import KDDenseDetector
from kd_det2.modeling.teacher import build_teacher_model

from ...Baselines.configs.fcos_R_50_fitnet import (  # noqa: F401  (COCO data, 1x SGD)
    dataloader,
    lr_multiplier,
    optimizer,
    train,
)
from .common.gfl import model as _student

_student.backbone.bottom_up.freeze_at = 2

model = L(KDDenseDetector)(
    student=_student,
    teacher=L(build_teacher_model)(
        config_file="projects/teachers/GFL_R_101_FPN_2x.yaml",
        weights="output/teachers/GFL_R_101_FPN_2x/model_final.pth",
    ),
    distillers=L(OrderedDict)(
        LD=L(LD)(
            atss_topk=9,
            loss_weight_main=0.25,
            temperature=10.0,
            loss_weight_vlr=0.25,
            loss_weight_kd=10.0,
            kd_temperature=2.0,
            vlr_low=0.25,
            vlr_exclude_positives=True,
            norm="official",
        )
    ),
    warmup_iters=0,
)

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # into the student
train.output_dir = "output/LD/gfl_r50"
