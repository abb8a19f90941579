"""GKD + BMFI from the spec: importance maps against hand computations, invariances, the gradient
path (student only, none in parity mode, never the teacher's parameters), the box-aware mask
(centred on off-centre boxes) and the attention maps. Synthetic tensors, then tiny real models."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import kd_cfg, make_batch, tiny_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from torch import nn

from kd_det2.modeling.distillers.gkd import (
    attention,
    background_mask,
    bmfi_level_losses,
    foreground_mask,
    foreground_masks,
    importance_map,
    minmax_normalize,
    neck_total_gradients,
)


# ------------------------------------------------------------------------------- importance maps
def test_maps_are_in_0_1_with_min_0_and_max_1_per_image():
    g = torch.Generator().manual_seed(0)
    a, grads = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    for absolute in (True, False):
        m = importance_map(a, grads, absolute)
        assert m.shape == (3, 5, 6)
        flat = m.flatten(1)
        assert torch.all(flat >= 0) and torch.all(flat <= 1)
        assert torch.allclose(flat.amin(1), torch.zeros(3))
        assert torch.allclose(flat.amax(1), torch.ones(3), atol=1e-6)
    # a constant map stays finite (all zeros)
    assert torch.equal(minmax_normalize(torch.full((1, 2, 2), 3.0)), torch.zeros(1, 2, 2))


def test_map_equals_a_hand_computation_where_the_gradient_is_analytic():
    """L = sum_k c_k sum_ij A_kij + 0.5 sum A^2: dL/dA_kij = c_k + A_kij."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 5, generator=g).requires_grad_()
    c = torch.tensor([2.0, -1.0, 0.5])
    loss = (c[None, :, None, None] * a).sum() + 0.5 * (a**2).sum()
    (grad,) = torch.autograd.grad(loss, a)
    grad_by_hand = c[None, :, None, None] + a.detach()
    assert torch.allclose(grad, grad_by_hand)
    x = a.detach()
    for absolute in (True, False):
        if absolute:
            w = grad_by_hand.abs().mean(dim=(2, 3))  # (N, C)
            cam = torch.einsum("nc,nchw->nhw", w, x.abs())
        else:
            w = grad_by_hand.mean(dim=(2, 3))
            cam = torch.einsum("nc,nchw->nhw", w, x).clamp(min=0)
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = (cam - lo).flatten(1).max(1).values[:, None, None]
        expected = (cam - lo) / (hi + 1e-7)
        assert torch.allclose(importance_map(x, grad, absolute), expected, atol=1e-6)
    # the two forms differ (signed weights cancel where the absolute ones add up)
    assert not torch.allclose(importance_map(x, grad, True), importance_map(x, grad, False))


def test_flipped_input_gives_the_flipped_map():
    torch.manual_seed(2)
    embed, head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
    x, target = torch.randn(2, 3, 6, 8), torch.randn(2, 2, 6, 8)

    def map_of(image, tgt):
        a = F.relu(embed(image))
        loss = ((head(a) - tgt) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, a)
        return importance_map(a, grad)

    m, m_flip = map_of(x, target), map_of(x.flip(-1), target.flip(-1))
    assert torch.allclose(m_flip, m.flip(-1), atol=1e-6)
    assert not torch.allclose(m, m.flip(-1))  # the test can fail


def test_identical_maps_give_zero_and_the_student_map_carries_gradient():
    g = torch.Generator().manual_seed(3)
    a, grad = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s = a.clone().requires_grad_()
    loss = (importance_map(a, grad) - importance_map(s, grad)).abs().mean()
    assert loss.item() == 0
    other = (importance_map(a * 1.5 + 0.3, grad) - importance_map(s, grad)).abs().mean()
    (d,) = torch.autograd.grad(other, s)
    assert d.abs().sum() > 0


@pytest.mark.parametrize("arch", ["FCOS", "RetinaNet", "GeneralizedRCNN"])
def test_leaf_gradients_completed_through_the_top_block_equal_the_full_gradients(arch):
    """P6/P7 from P5 (FCOS), from C5 with P7 from P6 (RetinaNet), P6 = maxpool(P5) (R-CNN): the
    teacher's leaf gradients plus the top block's paths equal autograd through the whole neck."""
    torch.manual_seed(5)
    fpn = build_backbone(tiny_cfg(arch)).eval()
    x = torch.randn(1, 3, 64, 64)
    weights = None

    def loss_of(features):
        nonlocal weights
        if weights is None:
            weights = {k: torch.randn_like(v) for k, v in features.items()}
        return sum(((weights[k] * v) ** 2).sum() for k, v in features.items())

    features = fpn(x)  # with the graph: P6 (and P7) depend on P5 or C5
    full = torch.autograd.grad(loss_of(features), list(features.values()))
    with torch.no_grad():
        bottom_up, leaves = fpn.bottom_up(x), fpn(x)
    leaves = {k: v.requires_grad_() for k, v in leaves.items()}
    direct = torch.autograd.grad(loss_of(leaves), list(leaves.values()))
    model = nn.Module()
    model.backbone = fpn
    total = neck_total_gradients(model, leaves, bottom_up, dict(zip(leaves, direct)))
    for (name, g_full), g_direct in zip(zip(features, full), direct):
        assert torch.allclose(total[name], g_full, rtol=1e-4, atol=1e-6), name
    changed = [n for n, a, b in zip(features, full, direct) if not torch.allclose(a, b)]
    assert changed  # the leaf gradients alone miss a path: the test can fail


# -------------------------------------------------------------------------------------- BMFI
def test_mask_of_an_off_centre_box_is_centred_on_the_box():
    """A 4 x 2-cell box near the top-left corner of a 16 x 16 map (stride 4): in-box cells are
    1/(4wh), the mask is symmetric about the box centre, its support stays within the 2x box.
    The official placement (on a 2H x 2W canvas, then cropped) gives zeros here."""
    boxes = torch.tensor([[8.0, 12.0, 24.0, 20.0]])  # cells x 2..6, y 3..5 -> w = 4, h = 2
    m = foreground_mask(boxes, (16, 16), (64, 64))
    w, h = 4, 2
    inside = m[3:5, 2:6]
    assert torch.allclose(inside, torch.full_like(inside, 1 / (4 * w * h)))
    support = (m > 0).nonzero()
    # the 2x box: x in [0, 8), y in [2, 6), cell centres strictly within
    assert support[:, 1].min() >= 0 and support[:, 1].max() <= 7
    assert support[:, 0].min() >= 2 and support[:, 0].max() <= 5
    patch = m[2:6, 0:8]
    assert torch.allclose(patch, patch.flip(0)) and torch.allclose(patch, patch.flip(1))
    assert m.sum() == pytest.approx(patch.sum().item())
    # the halo: a cell just left of the box, at |x - cx| = 2.5 and |y - cy| = 0.5 cells
    halo = math.exp(-0.5 * (2.5 / w) ** 2) * math.exp(-0.5 * (0.5 / h) ** 2) / (4 * w * h)
    assert m[3, 1].item() == pytest.approx(halo)


def test_mask_of_overlapping_boxes_is_the_max_and_empty_gives_zeros():
    big = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    small = torch.tensor([[8.0, 8.0, 12.0, 12.0]])
    both = foreground_mask(torch.cat([big, small]), (8, 8), (64, 64))
    one, two = foreground_mask(big, (8, 8), (64, 64)), foreground_mask(small, (8, 8), (64, 64))
    assert torch.equal(both, torch.maximum(one, two))
    assert torch.equal(foreground_mask(torch.zeros(0, 4), (8, 8), (64, 64)), torch.zeros(8, 8))


def test_batched_foreground_masks_equal_the_per_image_masks():
    torch.manual_seed(0)
    boxes = []
    for g in (3, 0, 5, 1):  # an image without boxes among them
        xy = torch.rand(g, 2) * 50
        boxes.append(torch.cat([xy, xy + 1 + torch.rand(g, 2) * 40], dim=1))
    for hw in ((16, 12), (4, 3), (1, 1)):
        batched = foreground_masks(boxes, hw, (64, 48))
        loop = torch.stack([foreground_mask(b, hw, (64, 48)) for b in boxes])
        assert batched.shape == (4, *hw) and torch.allclose(batched, loop)
        assert torch.equal(batched[1], torch.zeros(hw))


def test_background_mask_sums_to_one_and_is_zero_on_the_foreground():
    fg = torch.stack(
        [
            foreground_mask(torch.tensor([[10.0, 10.0, 30.0, 40.0]]), (16, 16), (64, 64)),
            torch.zeros(16, 16),
        ]
    )
    bg = background_mask(fg)
    assert torch.allclose(bg.flatten(1).sum(1), torch.ones(2))
    assert torch.all(bg[fg > 0] == 0)


def test_attention_sums_to_hw_and_c_and_bmfi_terms_vanish_for_equal_features():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 5, 3, 4, generator=g)
    spatial, channel = attention(f, 0.5)
    assert torch.allclose(spatial.flatten(1).sum(1), torch.full((2,), 12.0))
    assert torch.allclose(channel.sum(1), torch.full((2,), 5.0))
    fg = torch.rand(2, 3, 4, generator=g)
    same = bmfi_level_losses(f, f, fg, 0.5)
    assert all(v.item() == 0 for v in same.values())
    s = (f + 0.5 * torch.randn(2, 5, 3, 4, generator=g)).requires_grad_()
    terms = bmfi_level_losses(s, f, fg, 0.5)
    # by hand: the foreground term
    w = (s.detach() - f) ** 2 * spatial[:, None] * channel[:, :, None, None]
    assert terms["fg"].item() == pytest.approx((w * fg[:, None]).sum().item() / 2, rel=1e-5)
    assert terms["global"].item() == pytest.approx(w.sum().item() / (2 * 12), rel=1e-5)
    (d,) = torch.autograd.grad(sum(terms.values()), s)
    assert d.abs().sum() > 0


# --------------------------------------------------------------------------- real tiny models
def _model(tmp_path, arch, **keys):
    cfg = kd_cfg(tmp_path, arch, distillers=["GKD"])
    if arch == "GeneralizedRCNN":
        cfg.MODEL.KD.GKD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    for k, v in keys.items():
        cfg.MODEL.KD.GKD[k] = v
    torch.manual_seed(0)
    return build_model(cfg)


def _kd_step(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage():
        losses = model(batch)
    return {k: v for k, v in losses.items() if k.startswith("loss_kd_")}


@pytest.mark.parametrize("arch", ["GFL", "GeneralizedRCNN"])
@pytest.mark.parametrize("target", ["gt", "pseudo"])
def test_student_gets_gradient_from_gkd_and_the_teacher_none(tmp_path, arch, target):
    model = _model(tmp_path, arch, CAM_TARGET=target, PSEUDO_SCORE_THRESH=0.0)
    # the wrapper computes the teacher's GT losses only for GT maps; pseudo maps get its neck
    # outputs as leaves and compute their own losses
    assert model.needs == {"teacher_losses" if target == "gt" else "teacher_leaves"}
    batch = make_batch(boxes_per_image=(3, 1))
    kd = _kd_step(model, batch)
    assert set(kd) == {"loss_kd_gkd"} and torch.isfinite(kd["loss_kd_gkd"])
    kd["loss_kd_gkd"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    neck = [p for n, p in model.student.named_parameters() if n.startswith("backbone.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in neck)


def test_parity_mode_gives_no_gradient(tmp_path):
    model = _model(tmp_path, "FCOS", DIFFERENTIABLE=False)
    kd = _kd_step(model, make_batch(boxes_per_image=(3, 1)))
    assert kd["loss_kd_gkd"].item() > 0 and not kd["loss_kd_gkd"].requires_grad


def test_bmfi_terms_are_returned_weighted_and_train_the_adapters(tmp_path):
    model = _model(tmp_path, "RetinaNet", BETA=0.0, ALPHA=1e-3, GAMMA=2e-3, LAMBDA=5e-6)
    assert model.needs == frozenset()  # BMFI alone: the teacher runs without a graph
    kd = _kd_step(model, make_batch(boxes_per_image=(3, 1)))
    assert set(kd) == {"loss_kd_bmfi_fg", "loss_kd_bmfi_att", "loss_kd_bmfi_global"}
    sum(kd.values()).backward()
    adapters = list(model.distillers["GKD"].adapters.parameters())  # student 32 -> teacher 64
    assert adapters and all(p.grad is not None for p in adapters)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_all_zero_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="GKD"):
        _model(tmp_path, "FCOS", BETA=0.0)
