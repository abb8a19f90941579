"""LazyConfig twin of projects/Baselines/fcos_R_50_fitnet.yaml.

FCOS R101-FPN 3x teacher (projects/teachers/FCOS_R_101_FPN_3x.yaml) -> FCOS R50-FPN 1x student on
COCO 2017, FitNet on P3-P7 (256 channels on both sides: identity adapters) + logit KD (T=2).

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/Baselines/configs/fcos_R_50_fitnet.py
"""

from collections import OrderedDict

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import FitNet, LogitKD
from kd_det2.modeling.meta_arch import KDDenseDetector
from kd_det2.modeling.teacher import build_teacher_model

_LEVELS = ["p3", "p4", "p5", "p6", "p7"]

# Student: detectron2's FCOS R50-FPN (P6/P7 from P5, as build_fcos_resnet_fpn_backbone).
_student = model_zoo.get_config("common/models/fcos.py").model
_student.backbone.bottom_up.freeze_at = 2
_student.num_classes = 80

model = L(KDDenseDetector)(
    student=_student,
    teacher=L(build_teacher_model)(
        config_file="projects/teachers/FCOS_R_101_FPN_3x.yaml",
        weights="output/teachers/FCOS_R_101_FPN_3x/model_final.pth",
    ),
    # A LazyCall (not a plain dict): instantiate() only builds what is inside mappings with a
    # _target_.
    distillers=L(OrderedDict)(
        FitNet=L(FitNet)(
            in_features=_LEVELS,
            student_channels={f: 256 for f in _LEVELS},
            teacher_channels={f: 256 for f in _LEVELS},
            loss_weight=1.0,
        ),
        LogitKD=L(LogitKD)(num_classes=80, temperature=2.0, loss_weight=1.0),
    ),
    warmup_iters=0,
)

# COCO 2017, multi-scale training (640-800 px), 1x schedule at batch 16, SGD lr 0.01.
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
optimizer = model_zoo.get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # into the student
train.max_iter = 90000
train.checkpointer.period = 10000
train.eval_period = 0  # evaluate once, at the end
train.output_dir = "output/Baselines/fcos_R_50_fitnet"
