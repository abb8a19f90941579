"""LD distiller (kd_det2.modeling.distillers.ld), written from the spec."""

import math

import pytest
import torch
from conftest import kd_cfg, make_batch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from kd_det2.modeling.detectors import atss_match, build_gfl_anchor_generator, pairwise_diou
from kd_det2.modeling.distillers import LD
from kd_det2.modeling.distillers.ld import kd_cls_loss, ld_edge_loss, vlr_weights
from kd_det2.modeling.outputs import DetectorOutputs

N_BINS = 17  # reg_max 16


def _logits(p=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, 4 * N_BINS, generator=g) * scale


# --------------------------------------------------------------------------- edge LD and KD


def test_ld_is_zero_for_equal_distributions_and_invariant_to_a_shift_per_edge():
    s = _logits()
    assert ld_edge_loss(s, s.clone(), 10.0).abs().max() < 1e-6
    t = _logits(seed=1)
    shift = torch.randn(5, 4, 1).expand(5, 4, N_BINS).reshape(5, -1)
    base = ld_edge_loss(s, t, 3.0)
    assert (base >= 0).all()
    assert torch.allclose(ld_edge_loss(s + shift, t, 3.0), base, atol=1e-5)
    assert torch.allclose(ld_edge_loss(s, t - shift, 3.0), base, atol=1e-5)


def test_ld_at_tau_1_is_the_kl_mean_over_17_bins_by_hand():
    s, t = _logits(p=1), _logits(p=1, seed=3)
    ps = torch.softmax(s.view(4, N_BINS), 1)
    pt = torch.softmax(t.view(4, N_BINS), 1)
    kl = [
        sum(pt[e, k] * (math.log(pt[e, k]) - math.log(ps[e, k])) for k in range(17)) / 17
        for e in range(4)
    ]
    assert torch.allclose(
        ld_edge_loss(s, t, 1.0)[0], torch.tensor(kl, dtype=torch.float32), rtol=1e-4
    )


def test_ld_tau_squared_scaling_and_large_tau_limit():
    s, t = _logits(), _logits(seed=1)
    for tau in (2.0, 10.0):
        ps = torch.log_softmax(s.view(-1, N_BINS) / tau, 1)
        pt = torch.log_softmax(t.view(-1, N_BINS) / tau, 1)
        kl = (pt.exp() * (pt - ps)).mean(1).view(5, 4)
        assert torch.allclose(ld_edge_loss(s, t, tau), kl * tau**2, rtol=1e-4)
    small = [(ld_edge_loss(s, t, tau) * N_BINS / tau**2).max().item() for tau in (1, 10, 100)]
    assert small[0] > small[1] > small[2] and small[2] < 1e-3


def test_ld_grows_with_the_kl():
    s = _logits()
    losses = [
        ld_edge_loss(s, s + _logits(seed=1, scale=a), 1.0).sum().item() for a in (0.1, 0.5, 2.0)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_kd_cls_zero_when_equal_and_invariant_to_a_per_location_shift():
    z = torch.randn(6, 5)
    assert kd_cls_loss(z, z.clone(), 2.0).abs().max() < 1e-6
    t = torch.randn(6, 5)
    base = kd_cls_loss(z, t, 2.0)
    assert torch.allclose(kd_cls_loss(z + torch.randn(6, 1), t, 2.0), base, atol=1e-5)
    by_hand = torch.softmax(t / 2, 1) * (torch.log_softmax(t / 2, 1) - torch.log_softmax(z / 2, 1))
    assert torch.allclose(base, by_hand.mean(1) * 4, rtol=1e-4)


# ---------------------------------------------------------------------------------- the VLR


def _grid(size=64, strides=(8, 16, 32)):
    gen = build_gfl_anchor_generator(list(strides), 8.0)
    return [b.tensor for b in gen([torch.zeros(1, 1, size // s, size // s) for s in strides])]


def test_vlr_band_threshold_and_positive_exclusion():
    anchors = _grid()
    gt = torch.tensor([[12.3, 9.7, 41.1, 50.2]])
    m = atss_match(anchors, gt)
    all_anchors = torch.cat(anchors)
    diou = pairwise_diou(all_anchors, gt)
    pos = m.matched_idxs >= 0
    w = vlr_weights(m.ious, diou, m.thresholds, 0.25, exclude=pos)
    region = w > 0
    gamma = m.thresholds[0]
    cand = m.ious.gather(0, m.candidates)[:, 0]
    assert gamma.item() == pytest.approx((cand.mean() + cand.std()).item(), rel=1e-6)
    assert region.any() and pos.any()
    assert ((diou[region, 0] >= 0.25 * gamma) & (diou[region, 0] < gamma)).all()
    assert not (region & pos).any()
    assert torch.equal(w[region], m.ious[region, 0])  # weight = the IoU
    band = (diou[:, 0] >= 0.25 * gamma) & (diou[:, 0] < gamma)
    assert torch.equal(region, band & ~pos)  # everything in the band, nothing outside
    kept = vlr_weights(m.ious, diou, m.thresholds, 0.25, exclude=None)
    assert torch.equal(kept > 0, band)


def test_vlr_weight_is_the_largest_iou_among_qualifying_gts():
    ious = torch.tensor([[0.3, 0.5, 0.9], [0.2, 0.0, 0.0]])
    dious = torch.tensor([[0.25, 0.4, 0.8], [0.05, 0.0, 0.0]])
    thresholds = torch.tensor([0.5, 0.6, 0.7])  # GT 2: 0.8 >= 0.7, outside its band
    w = vlr_weights(ious, dious, thresholds, 0.25)
    assert w.tolist() == pytest.approx([0.5, 0.0])  # row 1: 0.05 < 0.25 * 0.5
    assert vlr_weights(ious[:, :0], dious[:, :0], thresholds[:0]).eq(0).all()


# ------------------------------------------------------------------------- the distiller


def _outputs(n=2, k=3, seed=0, size=64):
    strides = (8, 16, 32)
    g = torch.Generator().manual_seed(seed)
    shapes = [(size // s, size // s) for s in strides]
    gen = build_gfl_anchor_generator(list(strides), 8.0)
    return DetectorOutputs(
        images=None,
        backbone={},
        features={},
        head_in_features=["p3", "p4", "p5"],
        predictions={
            "cls_logits": [torch.randn(n, k, h, w, generator=g) for h, w in shapes],
            "box_deltas": [torch.randn(n, 4 * N_BINS, h, w, generator=g) for h, w in shapes],
        },
        anchors=gen([torch.zeros(1, 1, h, w) for h, w in shapes]),
    )


def _gts():
    a = Instances((64, 64))
    a.gt_boxes = Boxes(torch.tensor([[12.3, 9.7, 41.1, 50.2], [30.0, 30.0, 60.0, 62.0]]))
    a.gt_classes = torch.tensor([0, 2])
    b = Instances((64, 64))
    b.gt_boxes = Boxes(torch.zeros(0, 4))
    b.gt_classes = torch.zeros(0, dtype=torch.long)
    return [a, b]


def test_distiller_zero_when_student_equals_teacher_and_positive_otherwise():
    ld = LD()
    t = _outputs()
    losses = ld(t, t, _gts())
    assert set(losses) == {"loss_kd_ld_main", "loss_kd_ld_vlr", "loss_kd_ld_cls"}
    assert all(v.abs().item() < 1e-6 for v in losses.values())
    losses = ld(_outputs(seed=1), t, _gts())
    assert all(v.item() > 0 for v in losses.values())


def test_distiller_terms_follow_the_spec_by_hand():
    ld = LD(vlr_exclude_positives=True)
    s, t, gts = _outputs(seed=1), _outputs(), _gts()
    losses = ld(t, s, gts)
    flat = lambda xs: torch.cat([x.flatten(2).transpose(1, 2) for x in xs], 1)  # noqa: E731
    sl, sd = flat(s.predictions["cls_logits"]), flat(s.predictions["box_deltas"])
    tl, td = flat(t.predictions["cls_logits"]), flat(t.predictions["box_deltas"])
    pos, vlr = ld.regions(s.anchors, gts)
    assert not pos[1].any() and not (vlr[1] > 0).any()  # no GT: empty regions
    w = sl[pos].sigmoid().amax(1, keepdim=True)
    main = 0.25 * (ld_edge_loss(sd[pos], td[pos], 10.0) * w).sum() / 4
    assert losses["loss_kd_ld_main"].item() == pytest.approx(main.item(), rel=1e-5)
    r = vlr > 0
    v = 0.25 * (ld_edge_loss(sd[r], td[r], 10.0) * vlr[r][:, None]).sum() / 16
    assert losses["loss_kd_ld_vlr"].item() == pytest.approx(v.item(), rel=1e-5)
    kd, start = 0.0, 0
    for h in (8, 4, 2):
        p = pos[:, start : start + h * h]
        if p.any():
            s_l, t_l = sl[:, start : start + h * h][p], tl[:, start : start + h * h][p]
            kd += kd_cls_loss(s_l, t_l, 2.0).sum() / p.sum()
        start += h * h
    assert losses["loss_kd_ld_cls"].item() == pytest.approx(10 * float(kd), rel=1e-5)


def test_each_term_switches_off_and_norm_option():
    s, t = _outputs(seed=1), _outputs()
    losses = LD(loss_weight_vlr=0.0, loss_weight_kd=0.0)(t, s, _gts())
    assert set(losses) == {"loss_kd_ld_main"}
    mean = LD(norm="per_positive_mean", loss_weight_vlr=0, loss_weight_kd=0)(t, s, _gts())
    assert mean["loss_kd_ld_main"] < losses["loss_kd_ld_main"]
    with pytest.raises(ValueError, match="MODEL.KD.LD.NORM"):
        LD(norm="sum")


def test_main_weight_is_detached_and_teacher_gets_no_gradient():
    s, t = _outputs(seed=1), _outputs()
    for x in s.predictions["cls_logits"] + s.predictions["box_deltas"]:
        x.requires_grad_(True)
    for x in t.predictions["box_deltas"]:
        x.requires_grad_(True)
    loss = LD(loss_weight_vlr=0.0, loss_weight_kd=0.0)(t, s, _gts())["loss_kd_ld_main"]
    loss.backward()
    assert all(x.grad is None for x in s.predictions["cls_logits"])  # w_a is detached
    assert sum(x.grad.abs().sum() for x in s.predictions["box_deltas"]) > 0
    assert all(x.grad is None for x in t.predictions["box_deltas"])


def test_no_term_sends_gradient_to_the_teacher():
    s, t = _outputs(seed=1), _outputs()
    for x in t.predictions["cls_logits"] + t.predictions["box_deltas"]:
        x.requires_grad_(True)
    for x in s.predictions["cls_logits"] + s.predictions["box_deltas"]:
        x.requires_grad_(True)
    losses = LD()(t, s, _gts())
    sum(losses.values()).backward()
    assert all(x.grad is None for x in t.predictions["cls_logits"] + t.predictions["box_deltas"])
    assert sum(x.grad.abs().sum() for x in s.predictions["cls_logits"]) > 0  # class KD


def test_half_precision_predictions_give_finite_float32_losses():
    # fp16 logits as under AMP, large enough that an fp16 sum over all of them overflows
    s, t = _outputs(seed=1), _outputs()
    for out in (s, t):
        for key in ("cls_logits", "box_deltas"):
            out.predictions[key] = [(x - 40.0).half() for x in out.predictions[key]]
    losses = LD()(t, s, _gts())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_kd_ld_main"] > 0


def test_main_region_is_the_students_own_gfl_assignment():
    from conftest import tiny_cfg

    model = build_model(tiny_cfg("GFL"))
    batch = make_batch(boxes_per_image=(4, 2), seed=7)
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    gts = [b["instances"] for b in batch]
    labels, _ = model.label_anchors(anchors, gts)
    pos, _ = LD().regions(anchors, gts)
    assert pos.any() and torch.equal(pos, labels != model.num_classes)


def test_images_without_gt_give_finite_zero_losses():
    s, t = _outputs(seed=1), _outputs()
    gts = [_gts()[1], _gts()[1]]
    losses = LD()(t, s, gts)
    assert all(torch.isfinite(v) and v.item() == 0 for v in losses.values())


def test_end_to_end_gfl_ld_forward_backward(tmp_path):
    cfg = kd_cfg(tmp_path, "GFL", distillers=("LD",))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch(boxes_per_image=(3, 1)))
        assert "ld/num_vlr" in storage.latest()
    for key in ("loss_kd_ld_main", "loss_kd_ld_vlr", "loss_kd_ld_cls"):
        assert torch.isfinite(losses[key]) and losses[key].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.head.bbox_pred.weight.grad.abs().sum() > 0


def test_config_errors_name_the_fix(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("LD",))
    with pytest.raises(
        ValueError, match=r"'LD' supports the detectors \['GFL'\]; the student is FCOS"
    ):
        build_model(cfg)
    cfg = kd_cfg(tmp_path, "GFL", distillers=("LD",))
    cfg.MODEL.GFL.REG_MAX = 8
    with pytest.raises(ValueError, match="REG_MAX"):
        build_model(cfg)
    cfg = kd_cfg(tmp_path, "GFL", distillers=("LD",))
    cfg.MODEL.GFL.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_model(cfg)
