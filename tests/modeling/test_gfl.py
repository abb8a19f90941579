"""GFL detector: ATSS, QFL, DFL, integral decoding (hand-computed cases) and the model."""

import math

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

from kd_det2.modeling.detectors import (
    GFL,
    DistributionBox2BoxTransform,
    atss_match,
    build_gfl_anchor_generator,
    distribution_focal_loss,
    pairwise_diou,
    quality_focal_loss,
)


def _anchors(size=64, strides=(8, 16), scale=2.0):
    gen = build_gfl_anchor_generator(list(strides), scale)
    levels = [torch.zeros(1, 1, size // s, size // s) for s in strides]
    return [b.tensor for b in gen(levels)]


# ---------------------------------------------------------------- integral decoding and targets


def test_integral_of_one_hot_is_bin_times_stride():
    t = DistributionBox2BoxTransform(reg_max=16, anchor_scale=8.0)
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [100.0, 100.0, 228.0, 228.0]])  # strides 8, 16
    bins = torch.tensor([[0, 3, 7, 16], [1, 2, 5, 9]])
    logits = torch.full((2, 4, 17), -1e4).scatter(2, bins[..., None], 0.0).view(2, 68)
    boxes = t.apply_deltas(logits, anchors)
    centres = torch.tensor([[32.0, 32.0], [164.0, 164.0]])
    strides = torch.tensor([[8.0], [16.0]])
    expected = torch.cat([centres - bins[:, :2] * strides, centres + bins[:, 2:] * strides], 1)
    assert torch.allclose(boxes, expected)


def test_integral_is_the_expected_value():
    t = DistributionBox2BoxTransform(reg_max=4)
    logits = torch.tensor([[0.0, math.log(3.0), -1e4, -1e4, -1e4] * 4])  # p(0)=1/4, p(1)=3/4
    assert torch.allclose(t.integral(logits), torch.full((1, 4), 0.75))


def test_targets_are_distances_in_strides_clamped_below_reg_max():
    t = DistributionBox2BoxTransform(reg_max=16, anchor_scale=8.0)
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # centre (32, 32), stride 8
    gt = torch.tensor([[16.0, 8.0, 40.0, 400.0]])
    assert torch.allclose(t.get_deltas(anchors, gt), torch.tensor([[2.0, 3.0, 1.0, 15.9]]))
    inside_out = torch.tensor([[40.0, 40.0, 60.0, 60.0]])  # centre outside: negative -> 0
    assert t.get_deltas(anchors, inside_out)[0, :2].eq(0).all()


# ------------------------------------------------------------------------------- QFL and DFL


def test_qfl_hand_computed():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    labels = torch.tensor([1, 2])  # location 0: class 1 with quality 0.6; location 1: background
    quality = torch.tensor([0.6, 0.9])

    def bce(x, y):
        s = 1 / (1 + math.exp(-x))
        return -(y * math.log(s) + (1 - y) * math.log(1 - s)), s

    b00, s00 = bce(0.5, 0.0)
    b01, s01 = bce(-1.0, 0.6)
    b10, s10 = bce(2.0, 0.0)
    b11, s11 = bce(0.0, 0.0)
    expected = torch.tensor([b00 * s00**2 + b01 * abs(0.6 - s01) ** 2, b10 * s10**2 + b11 * s11**2])
    assert torch.allclose(quality_focal_loss(logits, labels, quality, beta=2.0), expected)


def test_qfl_is_zero_at_the_target_and_positive_elsewhere():
    q = torch.tensor([0.3])
    exact = torch.tensor([[math.log(0.3 / 0.7), -1e4]])
    assert quality_focal_loss(exact, torch.tensor([0]), q).item() == pytest.approx(0, abs=1e-6)
    off = torch.tensor([[0.0, -1e4]])
    assert quality_focal_loss(off, torch.tensor([0]), q).item() > 0


def test_dfl_hand_computed():
    logits = torch.tensor([[0.1, 0.5, -0.3, 1.2, 0.0]])
    target = torch.tensor([2.3])
    logp = torch.log_softmax(logits, dim=1)[0]
    expected = -(0.7 * logp[2] + 0.3 * logp[3])
    assert torch.allclose(distribution_focal_loss(logits, target), expected[None], atol=1e-6)


def test_dfl_prefers_the_two_neighbouring_bins():
    target = torch.tensor([1.25])
    best = torch.log(torch.tensor([[1e-6, 0.75, 0.25, 1e-6]]))
    worse = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25]]))
    assert distribution_focal_loss(best, target) < distribution_focal_loss(worse, target)


# ------------------------------------------------------------------------------------ ATSS


def _brute_force_threshold(anchors, gt, k=9):
    ious = pairwise_iou(Boxes(torch.cat(anchors)), Boxes(gt[None]))[:, 0]
    centre = (gt[:2] + gt[2:]) / 2
    chosen, start = [], 0
    for level in anchors:
        d = (((level[:, :2] + level[:, 2:]) / 2 - centre) ** 2).sum(1).sqrt()
        order = sorted(range(len(level)), key=lambda i: float(d[i]))[:k]
        chosen += [start + i for i in order]
        start += len(level)
    vals = ious[chosen]
    mean = float(vals.mean())
    std = math.sqrt(sum((float(v) - mean) ** 2 for v in vals) / (len(vals) - 1))
    return mean + std, set(chosen), ious


def test_atss_threshold_is_mean_plus_unbiased_std_of_9_per_level():
    anchors = _anchors()
    gt = torch.tensor([10.3, 12.9, 37.1, 45.6])
    thr, chosen, ious = _brute_force_threshold(anchors, gt)
    m = atss_match(anchors, gt[None], topk=9)
    assert m.thresholds.item() == pytest.approx(thr, rel=1e-5)
    assert set(m.candidates[:, 0].tolist()) == chosen
    all_anchors = torch.cat(anchors)
    centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2
    inside = ((centres > gt[:2] + 0.01) & (centres < gt[2:] - 0.01)).all(1)
    expected = {i for i in chosen if ious[i] >= thr and inside[i]}
    assert set(torch.nonzero(m.matched_idxs == 0)[:, 0].tolist()) == expected
    assert expected and (m.matched_idxs[list(set(range(len(all_anchors))) - expected)] == -1).all()


def test_atss_anchor_positive_for_two_gts_goes_to_the_higher_iou():
    # one level, 3 anchors, all candidates (topk 3). a0 has IoU 1 with GT [0,0,10,10] and 5/6
    # with GT [0,0,10,12]; thresholds 1/3 + sqrt(1/3) and 5/18 + std: a0 is positive for both.
    anchors = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])]
    gts = torch.tensor([[0.0, 0, 10, 12], [0.0, 0, 10, 10]])
    m = atss_match(anchors, gts, topk=3)
    assert m.thresholds[1].item() == pytest.approx(1 / 3 + math.sqrt(1 / 3), rel=1e-5)
    assert (m.ious[0] >= m.thresholds).all()
    assert m.matched_idxs.tolist() == [1, -1, -1]  # the higher IoU, not the first GT


def test_atss_no_gt():
    m = atss_match(_anchors(), torch.zeros(0, 4))
    assert (m.matched_idxs == -1).all() and m.ious.shape[1] == 0


def test_diou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [4.0, 0.0, 6.0, 2.0]])
    # identical: 1; half overlap: IoU 1/3, d^2 = 1, c^2 = 9 + 4; disjoint: 0 - 16 / (36 + 4)
    expected = torch.tensor([[1.0, 1 / 3 - 1 / 13, -16 / 40]])
    assert torch.allclose(pairwise_diou(a, b), expected, atol=1e-6)
    matched = matched_pairwise_iou(Boxes(a.expand(3, 4)), Boxes(b))
    assert torch.allclose(matched, torch.tensor([1.0, 1 / 3, 0.0]))


# ----------------------------------------------------------------------------------- model


def _gfl(fpn=32):
    cfg = tiny_cfg("GFL", fpn=fpn)
    torch.manual_seed(0)
    return build_model(cfg)


def test_gfl_builds_from_yacs_and_trains_on_empty_images():
    model = _gfl()
    assert isinstance(model, GFL) and model.head.bbox_pred.out_channels == 68
    model.train()
    losses = model(make_batch(boxes_per_image=(2, 0)))
    assert set(losses) == {"loss_qfl", "loss_dfl", "loss_giou"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    empty = model(make_batch(boxes_per_image=(0,)))
    assert all(torch.isfinite(v) for v in empty.values())
    assert empty["loss_giou"] == 0 and empty["loss_qfl"] > 0


def test_gfl_loss_normalisation_matches_the_definition():
    model = _gfl()
    model.train()
    batch = make_batch(boxes_per_image=(3, 1))
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    preds = model.head(features)
    gts = [b["instances"] for b in batch]
    losses = model.forward_training(images, features, preds, gts)

    logits, dists = model._transpose(preds)
    anchors = model.anchor_generator(features)
    labels, boxes = model.label_anchors(anchors, gts)
    pos = labels < 3
    all_anchors = Boxes.cat(anchors).tensor[None].expand(2, -1, -1)
    logits, dists = torch.cat(logits, 1), torch.cat(dists, 1)
    pred = model.box2box_transform.apply_deltas(dists[pos], all_anchors[pos])
    w = logits[pos].sigmoid().amax(1)
    q = torch.zeros(labels.shape)
    q[pos] = matched_pairwise_iou(Boxes(pred), Boxes(boxes[pos]))
    qfl = quality_focal_loss(logits.flatten(0, 1), labels.flatten(), q.flatten()).sum()
    target = model.box2box_transform.get_deltas(all_anchors[pos], boxes[pos])
    dfl = distribution_focal_loss(dists[pos].reshape(-1, 17), target.flatten()).view(-1, 4)
    assert losses["loss_qfl"].item() == pytest.approx(qfl.item() / pos.sum().item(), rel=1e-4)
    expected_dfl = 0.25 * (dfl.mean(1) * w).sum() / w.sum().clamp(min=1)
    assert losses["loss_dfl"].item() == pytest.approx(expected_dfl.item(), rel=1e-4)
    giou = 1 - _giou(pred, boxes[pos])
    expected_giou = 2.0 * (giou * w).sum() / w.sum().clamp(min=1)
    assert losses["loss_giou"].item() == pytest.approx(expected_giou.item(), rel=1e-4)
    # the box-loss weights (max class scores) and the QFL targets (IoUs) are detached
    model.zero_grad()
    (losses["loss_dfl"] + losses["loss_giou"]).backward(retain_graph=True)
    assert model.head.cls_score.weight.grad is None or model.head.cls_score.weight.grad.eq(0).all()
    model.zero_grad()
    losses["loss_qfl"].backward()
    assert model.head.bbox_pred.weight.grad is None or model.head.bbox_pred.weight.grad.eq(0).all()


def _giou(a, b):
    """Generalised IoU of aligned boxes, by its definition: IoU - |C \\ (A u B)| / |C|."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).prod(1)
    return inter / union - (hull - union) / hull


def test_gfl_inference_and_eval_shapes():
    model = _gfl().eval()
    with torch.no_grad():
        out = model(make_batch(n=2))
    assert len(out) == 2 and isinstance(out[0]["instances"], Instances)


def test_gfl_reg_max_mismatch_is_rejected():
    model = _gfl()
    with pytest.raises(ValueError, match="REG_MAX"):
        GFL(
            backbone=model.backbone,
            head=model.head,
            head_in_features=model.head_in_features,
            anchor_generator=model.anchor_generator,
            box2box_transform=DistributionBox2BoxTransform(reg_max=8),
            num_classes=3,
            pixel_mean=[0, 0, 0],
            pixel_std=[1, 1, 1],
        )


def test_gfl_missing_levels_error_names_the_backbone():
    cfg = tiny_cfg("GFL")
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.GFL.IN_FEATURES = ["p2", "p3"]
    with pytest.raises(ValueError, match="build_fcos_resnet_fpn_backbone"):
        build_model(cfg)
