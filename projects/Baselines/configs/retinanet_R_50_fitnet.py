"""LazyConfig twin of projects/Baselines/retinanet_R_50_fitnet.yaml.

RetinaNet R101-FPN 3x teacher (detectron2 model zoo) -> RetinaNet R50-FPN 1x student on COCO 2017,
FitNet on P3-P7 (256 channels on both sides: identity adapters) + logit KD (T=2).
"""

from detectron2 import model_zoo

from .fcos_R_50_fitnet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

# Student: detectron2's RetinaNet R50-FPN. Its anchor sizes are x * 2 ** (k / 3) exactly, as the
# teacher's; the yaml lists them rounded to 0.01 px.
model.student = model_zoo.get_config("common/models/retinanet.py").model
model.student.backbone.bottom_up.freeze_at = 2
model.student.num_classes = 80
model.teacher.config_file = "COCO-Detection/retinanet_R_101_FPN_3x.yaml"
model.teacher.weights = (
    "detectron2://COCO-Detection/retinanet_R_101_FPN_3x/190397697/model_final_971ab9.pkl"
)

train.output_dir = "output/Baselines/retinanet_R_50_fitnet"
