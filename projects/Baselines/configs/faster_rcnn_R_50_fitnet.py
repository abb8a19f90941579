"""LazyConfig twin of projects/Baselines/faster_rcnn_R_50_fitnet.yaml.

Faster R-CNN R101-FPN 3x teacher (detectron2 model zoo) -> Faster R-CNN R50-FPN 1x student on
COCO 2017, FitNet on P2-P6 (256 channels on both sides: identity adapters) + RoI-head logit KD
(T=2) on the student's sampled proposals.
"""

from detectron2 import model_zoo

from kd_det2.modeling.meta_arch import KDGeneralizedRCNN

from .fcos_R_50_fitnet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_LEVELS = ["p2", "p3", "p4", "p5", "p6"]

model._target_ = KDGeneralizedRCNN
# Student: detectron2's Mask R-CNN R50-FPN without its mask branch.
model.student = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.student.backbone.bottom_up.freeze_at = 2
for _key in ("mask_in_features", "mask_pooler", "mask_head"):  # MODEL.MASK_ON: False
    del model.student.roi_heads[_key]
model.student.roi_heads.num_classes = 80
model.teacher.config_file = "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
model.teacher.weights = (
    "detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"
)
model.distillers.FitNet.in_features = _LEVELS
model.distillers.FitNet.student_channels = {f: 256 for f in _LEVELS}
model.distillers.FitNet.teacher_channels = {f: 256 for f in _LEVELS}

optimizer.lr = 0.02
train.output_dir = "output/Baselines/faster_rcnn_R_50_fitnet"
