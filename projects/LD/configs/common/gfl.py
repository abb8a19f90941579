"""GFL v1 (R50-FPN, COCO) as a LazyConfig model, like detectron2's configs/common/models/*.py.

detectron2's FCOS backbone (ResNet-50 + FPN, P6/P7 from P5, as mmdetection's GFL) with kd_det2's
GFL head, ATSS assigner and losses. Keys as ``MODEL.GFL.*`` of the yacs configs.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from kd_det2.modeling.detectors import (
    GFL,
    DistributionBox2BoxTransform,
    GFLHead,
    build_gfl_anchor_generator,
)

model = L(GFL)(
    backbone=model_zoo.get_config("common/models/fcos.py").model.backbone,
    head=L(GFLHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        prior_prob=0.01,
        reg_max=16,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    anchor_generator=L(build_gfl_anchor_generator)(
        strides=[8, 16, 32, 64, 128], anchor_scale=8.0, offset=0.0
    ),
    box2box_transform=L(DistributionBox2BoxTransform)(
        reg_max="${..head.reg_max}", anchor_scale=8.0
    ),
    num_classes=80,
    atss_topk=9,
    qfl_beta=2.0,
    loss_weight_qfl=1.0,
    loss_weight_dfl=0.25,
    loss_weight_giou=2.0,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
