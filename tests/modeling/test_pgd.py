"""PGD distiller (kd_det2.modeling.distillers.pgd), written from the spec."""

import pytest
import torch
from conftest import kd_cfg, make_batch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from kd_det2.config import get_kd_cfg
from kd_det2.modeling.distillers import PGD, build_distillers
from kd_det2.modeling.distillers.pgd import _normalise, pgd_cls_terms, pgd_reg_loss
from kd_det2.modeling.outputs import DetectorOutputs, ModelSpec
from kd_det2.ops import key_region_weights, pad_gt, reference_key_region_weights

SIZES = [(8, 8), (4, 4)]
STRIDES = [8, 16]
K = 3


def _gt(boxes, classes=None):
    inst = Instances((64, 64))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    inst.gt_classes = torch.tensor(classes or [0] * len(boxes), dtype=torch.long)
    return inst


GTS = [_gt([[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]], [0, 2]), _gt([[10, 30, 50, 60]])]


def _outputs(n=2, c=4, a=1, seed=0, feats=None):
    """Synthetic dense-detector outputs on a 64 px image with two levels (strides 8, 16)."""
    g = torch.Generator().manual_seed(seed)
    if feats is None:
        feats = {
            t: [torch.randn(n, c, h, w, generator=g) for h, w in SIZES] for t in ("cls", "reg")
        }
    if a == 1:
        gen = DefaultAnchorGenerator(sizes=[[8], [16]], aspect_ratios=[1.0], strides=STRIDES)
    else:
        gen = DefaultAnchorGenerator(sizes=[[16], [32]], aspect_ratios=[0.5, 2.0], strides=STRIDES)
    levels = [torch.zeros(n, 1, h, w) for h, w in SIZES]
    return DetectorOutputs(
        images=None,
        backbone={},
        features={},
        head_in_features=["p3", "p4"],
        tower_blocks={t: [feats[t]] for t in feats},
        predictions={
            "cls_logits": [torch.randn(n, a * K, h, w, generator=g) for h, w in SIZES],
            "box_deltas": [torch.rand(n, a * 4, h, w, generator=g) * 3 for h, w in SIZES],
        },
        anchors=gen(levels),
    )


def _pgd(s_c=4, t_c=4, a=1, **kw):
    return PGD(
        num_classes=K,
        num_anchors=a,
        student_channels={"cls": s_c, "reg": s_c},
        teacher_channels={"cls": t_c, "reg": t_c},
        box2box_transform=Box2BoxTransformLinear(normalize_by_size=True),
        level_weights=kw.pop("level_weights", [1.0, 1.25]),
        topk=kw.pop("topk", 9),
        **kw,
    )


def test_config_defaults():
    p = get_kd_cfg().MODEL.KD.PGD
    assert (p.XI_CLS, p.XI_REG, p.TOPK, p.TEMPERATURE) == (0.8, 0.6, 30, 0.8)
    assert (p.ALPHA, p.BETA, p.GAMMA, p.DELTA) == (0.04, 0.02, 0.064, 8e-4)
    assert list(p.LEVEL_WEIGHTS) == [1.0, 1.25, 1.5, 1.75, 2.0] and p.TOWER_BLOCK == 0
    assert not (p.MASK_BEFORE_TOPK or p.OFFICIAL_BATCH_MASK_MIXING or p.OFFICIAL_XY_SWAP)
    assert p.ADAPT


def test_zero_when_student_equals_teacher():
    d = _pgd()
    t = _outputs()
    losses = d(t, _outputs(feats={k: list(v[0]) for k, v in t.tower_blocks.items()}), GTS)
    assert losses["loss_kd_pgd_cls"].item() == 0.0 and losses["loss_kd_pgd_reg"].item() == 0.0
    w_cls, w_reg, bg = d.key_region_maps(t, GTS)
    assert any((w > 0).any() for w in w_cls) and any((w > 0).any() for w in w_reg)
    f = t.tower_blocks["cls"][0][0]
    assert all(x.item() == 0.0 for x in pgd_cls_terms(f, f, w_cls[0], bg[0], 0.8))
    kw = dict(temperature=0.8, gamma=1.0, delta=1.0)
    assert pgd_reg_loss(f, f, w_reg[0], **kw).item() == 0.0


def test_images_without_gt():
    d = _pgd()
    empty = [_gt([]), _gt([])]
    w_cls, w_reg, bg = d.key_region_maps(_outputs(), empty)
    assert all((w == 0).all() for w in w_cls + w_reg) and all((b == 1).all() for b in bg)
    losses = d(_outputs(seed=1), _outputs(seed=2), empty)
    assert torch.isfinite(losses["loss_kd_pgd_cls"]) and losses["loss_kd_pgd_cls"].item() > 0
    assert losses["loss_kd_pgd_reg"].item() == 0.0


def test_maps_follow_the_key_region_op_and_spec_terms_by_hand():
    d = _pgd()
    t = _outputs()
    w_cls, w_reg, bg = d.key_region_maps(t, GTS)
    assert [tuple(w.shape) for w in w_cls] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    # background: 1 exactly where an anchor centre lies in no GT box
    x, y = t.anchors[0].get_centers().view(8, 8, 2).unbind(-1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    for x1, y1, x2, y2 in GTS[0].gt_boxes.tensor.tolist():
        inside |= (x > x1) & (x < x2) & (y > y1) & (y < y2)
    assert torch.equal(bg[0][0, 0], (~inside).float())
    # the cls terms by the spec's formulas, at level 0
    s, f = torch.randn(2, 4, 8, 8), t.tower_blocks["cls"][0][0]
    fg_, bg_, att = pgd_cls_terms(s, f, w_cls[0], bg[0], 0.8)

    def sp(z):  # spatial attention H*W*softmax_hw(mean_c |F| / T)
        return 64 * torch.softmax(z.abs().mean(1).view(2, -1) / 0.8, 1).view(2, 1, 8, 8)

    def ch(z):  # channel attention C*softmax_c(|F| / T) at every location
        return 4 * torch.softmax(z.abs() / 0.8, 1)

    m_fg = w_cls[0] / (w_cls[0] != 0).sum((2, 3), keepdim=True).clamp(min=1)
    err = sp(f) * ch(f) * (s - f) ** 2
    assert fg_.item() == pytest.approx((m_fg * err).sum().item() / 2, rel=1e-5)
    att_ref = (ch(s) - ch(f)).abs().sum() / (2 * 64) + (sp(s) - sp(f)).abs().sum() / 2
    assert att.item() == pytest.approx(att_ref.item(), rel=1e-5)
    assert bg_.item() > 0


def test_gradients_reach_student_and_adapters_not_teacher():
    d = _pgd(s_c=3, t_c=4, delta=1.0)
    assert isinstance(d.adapters["cls"], torch.nn.Conv2d)
    t = _outputs(c=4)
    for lists in t.tower_blocks.values():
        for f in lists[0]:
            f.requires_grad_(True)
    s = _outputs(c=3, seed=3)
    for lists in s.tower_blocks.values():
        for f in lists[0]:
            f.requires_grad_(True)
    losses = d(t, s, GTS)
    sum(losses.values()).backward()
    for tower in ("cls", "reg"):
        assert s.tower_blocks[tower][0][0].grad.abs().sum() > 0
        assert d.adapters[tower].weight.grad.abs().sum() > 0
        assert all(f.grad is None for f in t.tower_blocks[tower][0])
    # the attention terms alone carry gradient to the student
    only_att = _pgd(alpha=0.0, beta=0.0, gamma=0.0, delta=1.0)
    s = _outputs(seed=4)
    feat = s.tower_blocks["cls"][0][0].requires_grad_(True)
    only_att(_outputs(), s, GTS)["loss_kd_pgd_cls"].backward()
    assert feat.grad.abs().sum() > 0


def test_level_weight_scales_only_the_fg_bg_terms_of_its_level():
    t, s = _outputs(), _outputs(seed=5)
    a = _pgd()(t, s, GTS)
    b = _pgd(level_weights=[1.0, 3.0])(t, s, GTS)
    w_cls, _, bg = _pgd().key_region_maps(t, GTS)
    fg1, bg1, _ = pgd_cls_terms(
        s.tower_blocks["cls"][0][1], t.tower_blocks["cls"][0][1], w_cls[1], bg[1], 0.8
    )
    expected = (3.0 - 1.25) * (0.04 * fg1 + 0.02 * bg1)
    diff = b["loss_kd_pgd_cls"] - a["loss_kd_pgd_cls"]
    assert diff.item() == pytest.approx(expected.item(), rel=1e-4)
    assert b["loss_kd_pgd_reg"].item() == a["loss_kd_pgd_reg"].item()


def test_official_batch_mask_mixing_changes_only_multi_image_batches():
    t, s = _outputs(), _outputs(seed=6)
    per_image = _pgd()(t, s, GTS)["loss_kd_pgd_cls"]
    mixed = _pgd(official_batch_mask_mixing=True)(t, s, GTS)["loss_kd_pgd_cls"]
    assert mixed.item() != pytest.approx(per_image.item(), rel=1e-4)
    t1, s1 = _outputs(n=1), _outputs(n=1, seed=6)
    one = _pgd()(t1, s1, GTS[:1])["loss_kd_pgd_cls"]
    one_mixed = _pgd(official_batch_mask_mixing=True)(t1, s1, GTS[:1])["loss_kd_pgd_cls"]
    assert one.item() == pytest.approx(one_mixed.item(), rel=1e-6)


def _hwa(x, k):
    """(N, A*k, H, W) -> (N, H*W*A, k)"""
    n, _, h, w = x.shape
    return x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


def test_per_image_independence_holds_without_mixing_only():
    # image 1 of the student equals the teacher, so it adds nothing per image; changing its GTs
    # must then leave the cls loss unchanged, unless the official batch mask mixing is on
    t = _outputs()
    feats = {k: [f.clone() for f in v[0]] for k, v in t.tower_blocks.items()}
    for levels in feats.values():
        for f in levels:
            f[0] = torch.randn_like(f[0])
    s = _outputs(feats=feats)
    other = [GTS[0], _gt([[0.0, 0.0, 30.0, 30.0]])]
    for mixing in (False, True):
        d = _pgd(official_batch_mask_mixing=mixing)
        a, b = d(t, s, GTS)["loss_kd_pgd_cls"], d(t, s, other)["loss_kd_pgd_cls"]
        assert (a.item() == b.item()) == (not mixing)


def test_normalised_fg_mask_sums_to_the_mean_nonzero_weight():
    w_cls, _, _ = _pgd().key_region_maps(_outputs(), GTS)
    for w in w_cls:
        m = _normalise(w)
        for i in range(2):
            nz = w[i][w[i] != 0]
            expected = nz.mean().item() if len(nz) else 0.0
            assert m[i].sum().item() == pytest.approx(expected, rel=1e-5)


def test_anchor_level_topk_maps_are_max_over_the_anchors_of_a_location():
    d = _pgd(a=2, topk_over="anchors")
    t = _outputs(a=2)
    w_cls, _, bg = d.key_region_maps(t, GTS)
    logits = torch.cat([_hwa(x, K) for x in t.predictions["cls_logits"]], 1)
    deltas = torch.cat([_hwa(x, 4) for x in t.predictions["box_deltas"]], 1)
    anchors = Boxes.cat(t.anchors).tensor
    boxes = d.box2box_transform.apply_deltas(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(
        2, -1, 4
    )
    w, b = key_region_weights(
        logits.sigmoid(), boxes, Boxes(anchors).get_centers(), *pad_gt(GTS), topk=9
    )
    per_loc = w[0].view(2, -1, 2).amax(-1)
    assert torch.equal(w_cls[0].reshape(2, -1), per_loc[:, :64])
    assert torch.equal(w_cls[1].reshape(2, -1), per_loc[:, 64:])
    assert torch.equal(bg[0].reshape(2, -1), b.view(2, -1, 2)[:, :64, 0])


def test_location_level_topk_ranks_locations_by_their_best_anchor():
    """TOPK_OVER "locations": K distinct locations per GT, ranked by the best quality of their
    anchors, equal to the reference loop; the anchor-level variant can select fewer locations."""
    t = _outputs(a=2)
    logits = torch.cat([_hwa(x, K) for x in t.predictions["cls_logits"]], 1)
    deltas = torch.cat([_hwa(x, 4) for x in t.predictions["box_deltas"]], 1)
    anchors = Boxes.cat(t.anchors).tensor
    transform = Box2BoxTransformLinear(normalize_by_size=True)
    boxes = transform.apply_deltas(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(2, -1, 4)
    centres = Boxes(anchors).get_centers()
    gt = pad_gt(GTS)
    w, b = key_region_weights(logits.sigmoid(), boxes, centres, *gt, topk=5, anchors_per_location=2)
    ref_w, ref_b = reference_key_region_weights(
        logits.sigmoid(), boxes, centres, *gt, topk=5, anchors_per_location=2
    )
    assert w.shape == (2, 2, 80) and torch.allclose(w, ref_w, atol=1e-6)
    assert torch.equal(b, ref_b)
    # the distiller's maps are these, split per level
    w_cls, _, bg = _pgd(a=2, topk=5, exclude_padding=False).key_region_maps(t, GTS)
    assert torch.equal(torch.cat([x.reshape(2, -1) for x in w_cls], 1), w[0])
    # a GT holding every centre: exactly K distinct locations get a weight
    big = pad_gt([_gt([[-1e3, -1e3, 1e3, 1e3]]), _gt([[-1e3, -1e3, 1e3, 1e3]])])
    w_big, _ = key_region_weights(
        logits.sigmoid(), boxes, centres, *big, topk=5, anchors_per_location=2
    )
    assert int((w_big[0, 0] > 0).sum()) == 5


def test_official_xy_swap_transposes_the_in_box_test():
    t = _outputs()
    swapped_gts = [
        _gt(g.gt_boxes.tensor[:, [1, 0, 3, 2]].tolist(), g.gt_classes.tolist()) for g in GTS
    ]
    _, _, bg_swap = _pgd(official_xy_swap=True).key_region_maps(t, GTS)
    _, _, bg_ref = _pgd().key_region_maps(t, swapped_gts)
    assert all(torch.equal(a, b) for a, b in zip(bg_swap, bg_ref))
    _, _, bg = _pgd().key_region_maps(t, GTS)
    assert not torch.equal(bg[0], bg_swap[0])


def test_low_precision_features_give_float32_losses():
    t, s = _outputs(), _outputs(seed=7)
    for o in (t, s):
        o.tower_blocks = {k: [[f.bfloat16() for f in v[0]]] for k, v in o.tower_blocks.items()}
        o.predictions = {k: [x.bfloat16() for x in v] for k, v in o.predictions.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _pgd(s_c=4, t_c=4)(t, s, GTS)
    for v in losses.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)


def test_tower_block_out_of_range_and_missing_adapter_are_clear_errors():
    with pytest.raises(ValueError, match="MODEL.KD.PGD.TOWER_BLOCK"):
        _pgd(tower_block=3)(_outputs(), _outputs(seed=1), GTS)
    with pytest.raises(ValueError, match="MODEL.KD.PGD.ADAPT"):
        _pgd(s_c=3, t_c=4, adapt=False)


@pytest.mark.parametrize("arch", ["FCOS", "RetinaNet", "GFL"])
def test_end_to_end_forward_backward(tmp_path, arch):
    cfg = kd_cfg(tmp_path, arch, distillers=("PGD",))
    cfg.MODEL.KD.PGD.TOPK = 9
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch(boxes_per_image=(3, 1)))
        assert "pgd/num_fg_cls" in storage.latest()
    for key in ("loss_kd_pgd_cls", "loss_kd_pgd_reg"):
        assert losses[key].dim() == 0 and torch.isfinite(losses[key]) and losses[key].item() >= 0
    # an untrained teacher's top-K may all lie outside the boxes (code order): reg can be 0
    assert losses["loss_kd_pgd_cls"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.distillers["PGD"].parameters())  # 32 -> 64


def test_config_errors(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("PGD",))
    cfg.MODEL.KD.PGD.LEVEL_WEIGHTS = [1.0, 2.0]
    with pytest.raises(ValueError, match="MODEL.KD.PGD.LEVEL_WEIGHTS"):
        build_model(cfg)
    spec = dict(
        kind="dense",
        arch="RetinaNet",
        num_classes=K,
        backbone_shapes={},
        feature_shapes={f"p{i}": ShapeSpec(channels=4, stride=2**i) for i in range(3, 8)},
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        tower_channels={"cls": 4, "reg": 4},
        box2box_transform=Box2BoxTransformLinear(),
    )
    cfg = get_kd_cfg()
    student, teacher = ModelSpec(num_anchors=9, **spec), ModelSpec(num_anchors=1, **spec)
    with pytest.raises(ValueError, match="MODEL.ANCHOR_GENERATOR"):
        build_distillers(cfg, ["PGD"], student, teacher)
    no_towers = ModelSpec(num_anchors=9, **{**spec, "tower_channels": {}})
    with pytest.raises(ValueError, match="cls and reg towers"):
        build_distillers(cfg, ["PGD"], no_towers, student)
    no_transform = ModelSpec(num_anchors=9, **{**spec, "box2box_transform": None})
    with pytest.raises(ValueError, match="box2box_transform"):
        build_distillers(cfg, ["PGD"], student, no_transform)
    assert isinstance(build_distillers(cfg, ["PGD"], student, student)["PGD"], PGD)


def test_padding_locations_are_left_out_of_the_maps():
    """EXCLUDE_PADDING: a location whose centre is in the batch padding (right of a narrower
    image) is 0 in W and B, and never a candidate (its quality is 0)."""
    t = _outputs()
    t.images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 40)])  # image 1: 40 px wide
    w_cls, w_reg, bg = _pgd().key_region_maps(t, GTS)
    w_all, _, bg_all = _pgd(exclude_padding=False).key_region_maps(t, GTS)
    for lvl, anchors in enumerate(t.anchors):
        cols = anchors.get_centers()[:, 0].view(SIZES[lvl])[0]  # centre x of each column
        padding = cols >= 40
        assert padding.any() and not padding.all()
        assert (bg[lvl][1][..., padding] == 0).all() and (w_cls[lvl][1][..., padding] == 0).all()
        assert (w_reg[lvl][1][..., padding] == 0).all()
        assert torch.equal(bg[lvl][0], bg_all[lvl][0])  # the full-width image is unchanged
        assert torch.equal(bg[lvl][1][..., ~padding], bg_all[lvl][1][..., ~padding])
    # counted as background when padding is not excluded
    assert (bg_all[0][1][..., t.anchors[0].get_centers()[:8, 0] >= 40] == 1).any()
