"""LazyConfig twin of projects/demo/rcnn_teacher.yaml (+ Base-Shapes-RCNN.yaml).

Demo two-stage teacher: Faster R-CNN with an ImageNet-pretrained EfficientNet-Lite2 backbone
(FrozenBN, stem + stage2 frozen; RGB input normalised as (x - 127) / 128), a 64-channel FPN P2-P6
on stage2-stage5 (P6 max-pooled from P5), anchors 8-128 px, RPN and RoI batches of 128, 256
proposals, a 2-fc (256) box head, with the data, solver and schedule (400 iterations) of the FCOS
demo teacher (fcos_teacher.py). The demo Faster R-CNN students (rcnn_student.py) share the neck
and heads.

    python tools/lazyconfig_train_net.py --config-file projects/demo/configs/rcnn_teacher.py
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from kd_det2.modeling.backbones import EfficientNetLiteBackbone

from .fcos_teacher import dataloader, lr_multiplier, optimizer, train  # noqa: F401

# Model: detectron2's Mask R-CNN FPN without its mask branch (MODEL.MASK_ON: False).
model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
for _key in ("mask_in_features", "mask_pooler", "mask_head"):
    del model.roi_heads[_key]
model.backbone.bottom_up = L(EfficientNetLiteBackbone)(
    variant="lite2",
    out_features=["stage2", "stage3", "stage4", "stage5"],
    norm="FrozenBN",
    freeze_at=2,  # MODEL.BACKBONE.FREEZE_AT: the stem and stage2
    pretrained="imagenet",
)
model.backbone.in_features = ["stage2", "stage3", "stage4", "stage5"]
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.batch_size_per_image = 128
model.proposal_generator.pre_nms_topk = (1000, 500)  # (train, test)
model.proposal_generator.post_nms_topk = (256, 256)
model.roi_heads.num_classes = 6
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.pixel_mean = [127.0, 127.0, 127.0]  # EfficientNet-Lite normalisation, RGB, 0-255 units
model.pixel_std = [128.0, 128.0, 128.0]
model.input_format = "RGB"

train.output_dir = "output/demo/teacher_rcnn"
