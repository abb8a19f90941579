"""LazyConfig twin of projects/PGD/fcos_r50.yaml.

COCO-scale PGD setting: FCOS R101-FPN 3x teacher -> FCOS R50-FPN 1x student, with the student's
neck and head initialised from the teacher (as in the PGD paper).

    python tools/lazyconfig_train_net.py --config-file projects/PGD/configs/fcos_r50.py --num-gpus 8

The PGD distiller itself is not in this release yet: until it is, this config distils with the
FitNet + logit-KD baselines (projects/Baselines/configs/fcos_R_50_fitnet.py).
"""

from kd_det2.modeling.teacher import build_kd_model

from ...Baselines.configs.fcos_R_50_fitnet import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

# The same KD wrapper, built through build_kd_model to copy the teacher's neck and head into the
# student once both exist (MODEL.KD.INIT_STUDENT_FROM_TEACHER in yacs).
model._target_ = build_kd_model
model.meta_arch = "KDDenseDetector"
model.init_student_from_teacher = True
model.init_student_skip = ["backbone.bottom_up."]

train.output_dir = "output/PGD/fcos_r50"
