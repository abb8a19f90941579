"""GFL (Generalized Focal Loss v1, Li et al., NeurIPS 2020) as a detectron2 dense detector.

``MODEL.META_ARCHITECTURE: "GFL"`` (yacs, keys ``MODEL.GFL.*``) or ``L(GFL)(...)`` (LazyConfig).
One square anchor per location (``ANCHOR_SCALE`` strides wide) assigned by ATSS; a RetinaNet-like
head with shared GN towers whose classification branch predicts the joint class-IoU quality
(trained with Quality Focal Loss) and whose regression branch predicts, for each of the four box
edges, a distribution over ``REG_MAX + 1`` bins (Distribution Focal Loss + GIoU on the integral
decoding). The box-edge distributions are what localization distillation (LD) needs.

Notation: N images, K classes, n = reg_max, level i of size Hi x Wi, R = sum Hi*Wi locations.
"""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from fvcore.nn import giou_loss
from torch import Tensor, nn

from ...config import add_gfl_config
from .atss import atss_match
from .fcos import shared_head_width
from .gfl_losses import DistributionBox2BoxTransform, distribution_focal_loss, quality_focal_loss

__all__ = ["GFL", "GFLHead", "build_gfl_anchor_generator"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per level on the regression output)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GFLHead(RetinaNetHead):
    """RetinaNet's head with one anchor per location, a distribution regression output
    (4 x (n + 1) channels) and a learnable scale per level on it.

    Submodules ``cls_subnet``, ``bbox_subnet``, ``cls_score``, ``bbox_pred`` as RetinaNet's.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: List[int],
        norm="GN",
        prior_prob: float = 0.01,
        reg_max: int = 16,
    ):
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            num_anchors=1,
            conv_dims=conv_dims,
            norm=norm,
            prior_prob=prior_prob,
        )
        self.reg_max = int(reg_max)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], 4 * (reg_max + 1), 3, padding=1)
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        add_gfl_config(cfg)
        g = cfg.MODEL.GFL
        return {
            "input_shape": input_shape,
            "num_classes": g.NUM_CLASSES,
            "conv_dims": [shared_head_width(input_shape, "GFL")] * g.NUM_CONVS,
            "norm": g.NORM,
            "prior_prob": g.PRIOR_PROB,
            "reg_max": g.REG_MAX,
        }

    def forward(self, features: List[Tensor]):
        """
        Args:
            features: per level (N, C, Hi, Wi), high to low resolution.

        Returns:
            cls_logits: per level (N, K, Hi, Wi), logits of the class-IoU quality;
            box_dists: per level (N, 4 * (n + 1), Hi, Wi), edge-distribution logits (l, t, r, b).
        """
        logits, dists = [], []
        for feature, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            dists.append(scale(self.bbox_pred(self.bbox_subnet(feature))))
        return logits, dists


def build_gfl_anchor_generator(strides: List[int], anchor_scale: float = 8.0, offset=0.0):
    """One square anchor of side ``anchor_scale x stride`` per location and level."""
    return DefaultAnchorGenerator(
        sizes=[[anchor_scale * s] for s in strides],
        aspect_ratios=[[1.0]],
        strides=list(strides),
        offset=offset,
    )


@META_ARCH_REGISTRY.register()
class GFL(DenseDetector):
    """GFL v1 with the ATSS assigner.

    Losses (per batch, as mmdetection's GFL head): ``loss_qfl`` summed over locations and
    classes / number of positives; ``loss_giou`` and ``loss_dfl`` (mean over the 4 edges) on the
    positives, weighted by the detached max class score of each positive / sum of those weights.
    The QFL target of a positive is the IoU of its decoded box with its GT.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: GFLHead,
        head_in_features: List[str],
        anchor_generator,
        box2box_transform: DistributionBox2BoxTransform,
        num_classes: int,
        atss_topk: int = 9,
        qfl_beta: float = 2.0,
        loss_weight_qfl: float = 1.0,
        loss_weight_dfl: float = 0.25,
        loss_weight_giou: float = 2.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
        input_format: str = "BGR",
    ):
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if head.reg_max != box2box_transform.reg_max:
            raise ValueError(
                f"GFL head has reg_max {head.reg_max}, its box transform "
                f"{box2box_transform.reg_max}: give both the same MODEL.GFL.REG_MAX"
            )
        if anchor_generator.num_cell_anchors[0] != 1:
            raise ValueError("GFL needs one anchor per location (aspect_ratios [[1.0]], one size)")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.reg_max = head.reg_max
        self.atss_topk = atss_topk
        self.qfl_beta = qfl_beta
        self.loss_weights = {
            "loss_qfl": loss_weight_qfl,
            "loss_dfl": loss_weight_dfl,
            "loss_giou": loss_weight_giou,
        }
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        add_gfl_config(cfg)
        g = cfg.MODEL.GFL
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in g.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.GFL.IN_FEATURES has {missing}, which the backbone does not output "
                f"(it outputs {sorted(shapes)}). Use MODEL.BACKBONE.NAME "
                "'build_fcos_resnet_fpn_backbone' for p3..p7."
            )
        feature_shapes = [shapes[f] for f in g.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": GFLHead(cfg, feature_shapes),
            "head_in_features": g.IN_FEATURES,
            "anchor_generator": build_gfl_anchor_generator(
                [s.stride for s in feature_shapes], g.ANCHOR_SCALE, g.ANCHOR_OFFSET
            ),
            "box2box_transform": DistributionBox2BoxTransform(g.REG_MAX, g.ANCHOR_SCALE),
            "num_classes": g.NUM_CLASSES,
            "atss_topk": g.ATSS_TOPK,
            "qfl_beta": g.QFL_BETA,
            "loss_weight_qfl": g.LOSS_WEIGHT_QFL,
            "loss_weight_dfl": g.LOSS_WEIGHT_DFL,
            "loss_weight_giou": g.LOSS_WEIGHT_GIOU,
            "test_score_thresh": g.SCORE_THRESH_TEST,
            "test_topk_candidates": g.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": g.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def _transpose(self, predictions):
        return self._transpose_dense_predictions(
            predictions, [self.num_classes, 4 * (self.reg_max + 1)]
        )

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """ATSS labels.

        Returns:
            gt_labels: (N, R) class index, K for background;
            gt_boxes: (N, R, 4) matched GT box (the anchor itself for background).
        """
        per_level = [a.tensor for a in anchors]
        all_anchors = torch.cat(per_level)
        labels, boxes = [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor
            matched = atss_match(per_level, gt, self.atss_topk).matched_idxs
            pos = matched >= 0
            idx = matched.clamp(min=0)
            cls = inst.gt_classes[idx] if len(inst) else torch.zeros_like(matched)
            labels.append(torch.where(pos, cls, torch.full_like(cls, self.num_classes)))
            box = gt[idx] if len(inst) else all_anchors
            boxes.append(torch.where(pos[:, None], box, all_anchors))
        return torch.stack(labels), torch.stack(boxes)

    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        logits, dists = self._transpose(predictions)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, logits, dists, gt_labels, gt_boxes)

    def losses(self, anchors, logits, dists, gt_labels, gt_boxes):
        """
        Args:
            anchors: per level Boxes (Hi*Wi, 4); logits: per level (N, Hi*Wi, K);
            dists: per level (N, Hi*Wi, 4(n+1)); gt_labels (N, R); gt_boxes (N, R, 4).
        """
        n = gt_labels.shape[0]
        anchors = Boxes.cat(anchors).tensor[None].expand(n, -1, -1)
        logits = torch.cat(logits, dim=1).float()  # (N, R, K)
        dists = torch.cat(dists, dim=1).float()
        pos = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = _mean_over_workers(pos.sum().float()).clamp(min=1.0)

        pos_anchors, pos_gt, pos_dists = anchors[pos], gt_boxes[pos], dists[pos]
        pred_boxes = self.box2box_transform.apply_deltas(pos_dists, pos_anchors)
        weights = logits[pos].detach().sigmoid().amax(dim=1)  # (P,)
        quality = torch.zeros_like(gt_labels, dtype=logits.dtype)
        quality[pos] = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(pos_gt))
        loss_qfl = quality_focal_loss(
            logits.flatten(0, 1), gt_labels.flatten(), quality.flatten(), self.qfl_beta
        ).sum()
        weight_sum = _mean_over_workers(weights.sum()).clamp(min=1.0)
        loss_giou = (giou_loss(pred_boxes, pos_gt, reduction="none") * weights).sum()
        targets = self.box2box_transform.get_deltas(pos_anchors, pos_gt)  # (P, 4)
        dfl = distribution_focal_loss(pos_dists.reshape(-1, self.reg_max + 1), targets.flatten())
        loss_dfl = (dfl.view(-1, 4).mean(dim=1) * weights).sum()
        losses = {
            "loss_qfl": loss_qfl / num_pos,
            "loss_dfl": loss_dfl / weight_sum,
            "loss_giou": loss_giou / weight_sum,
        }
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        logits, dists = self._transpose(predictions)
        anchors = self.anchor_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in logits]
            results.append(
                self.inference_single_image(anchors, scores, [x[i] for x in dists], image_size)
            )
        return results

    #: score threshold, top-k per level, decoding with ``box2box_transform``, class-wise NMS.
    inference_single_image = RetinaNet.inference_single_image


def _mean_over_workers(x: Tensor) -> Tensor:
    """Mean of a scalar over the distributed workers (itself when not distributed)."""
    world = comm.get_world_size()
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x = x / world
    return x
