"""Baseline distiller formulas, written from their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from kd_det2.modeling.distillers import (
    KD_DISTILLER_REGISTRY,
    FitNet,
    LogitKD,
    build_distillers,
    registered_distillers,
)
from kd_det2.modeling.distillers.baselines import sigmoid_kd_loss, softmax_kd_loss
from kd_det2.modeling.outputs import DetectorOutputs


def _outputs(features=None, logits=None, roi=None):
    return DetectorOutputs(
        images=None,
        backbone={},
        features=features or {},
        head_in_features=sorted(features or {}),
        predictions={"cls_logits": logits} if logits is not None else {},
        roi=roi or {},
    )


def test_registry_has_baselines():
    assert {"FitNet", "LogitKD"} <= set(registered_distillers())
    assert KD_DISTILLER_REGISTRY.get("FitNet") is FitNet


def test_sigmoid_kd_matches_binary_kl_by_hand():
    s, t, T = torch.tensor([[0.3, -1.0]]), torch.tensor([[2.0, 0.5]]), 2.0
    expected = 0.0
    for sv, tv in zip(s[0].tolist(), t[0].tolist()):
        p, q = 1 / (1 + math.exp(-tv / T)), 1 / (1 + math.exp(-sv / T))
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    expected *= T**2  # summed over classes, mean over the single location, times T^2
    assert sigmoid_kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_sigmoid_kd_zero_when_equal_and_mean_over_locations():
    x = torch.randn(7, 4)
    assert sigmoid_kd_loss(x, x, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(1, 4), torch.randn(1, 4)
    one = sigmoid_kd_loss(s, t, 2.0)
    # duplicating the locations must not change a per-location mean
    assert sigmoid_kd_loss(s.repeat(5, 1), t.repeat(5, 1), 2.0).item() == pytest.approx(one.item())


def test_softmax_kd_matches_kl_by_hand_with_t2_scaling():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    for T in (1.0, 4.0):
        p, log_q = F.softmax(t / T, dim=1), F.log_softmax(s / T, dim=1)
        expected = (p * (p.log() - log_q)).sum(1).mean() * T * T
        assert softmax_kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)
    assert softmax_kd_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert softmax_kd_loss(s[:0], t[:0], 2.0).item() == 0.0


def test_fitnet_mse_mean_over_levels_and_adapter():
    f = FitNet(
        in_features=["p3", "p4"],
        student_channels={"p3": 2, "p4": 2},
        teacher_channels={"p3": 2, "p4": 2},
        loss_weight=2.0,
    )
    assert isinstance(f.adapters["p3"], torch.nn.Identity)
    s = {"p3": torch.zeros(1, 2, 4, 4), "p4": torch.zeros(1, 2, 2, 2)}
    t = {"p3": torch.ones(1, 2, 4, 4), "p4": torch.full((1, 2, 2, 2), 3.0)}
    loss = f(_outputs(t), _outputs(s), [])["loss_kd_fitnet"]
    assert loss.item() == pytest.approx(2.0 * (1.0 + 9.0) / 2)
    assert f(_outputs(t), _outputs(t), [])["loss_kd_fitnet"].item() == 0.0
    wide = FitNet(in_features=["p3"], student_channels={"p3": 2}, teacher_channels={"p3": 5})
    assert isinstance(wide.adapters["p3"], torch.nn.Conv2d)
    assert wide.adapters["p3"].weight.shape == (5, 2, 1, 1)


def test_fitnet_gradients_reach_student_not_teacher():
    f = FitNet(in_features=["p3"], student_channels={"p3": 2}, teacher_channels={"p3": 3})
    s = torch.randn(1, 2, 4, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, requires_grad=True)
    f(_outputs({"p3": t.detach()}), _outputs({"p3": s}), [])["loss_kd_fitnet"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_fitnet_spatial_mismatch_is_a_clear_error():
    f = FitNet(in_features=["p3"], student_channels={"p3": 2}, teacher_channels={"p3": 2})
    with pytest.raises(ValueError, match="size_divisibility"):
        f(_outputs({"p3": torch.zeros(1, 2, 4, 4)}), _outputs({"p3": torch.zeros(1, 2, 5, 4)}), [])


def test_logit_kd_dense_splits_anchors_and_classes():
    k, a = 3, 2
    d = LogitKD(num_classes=k, temperature=1.0)
    s = [torch.randn(2, a * k, 4, 4)]
    t = [torch.randn(2, a * k, 4, 4)]
    got = d(_outputs(logits=t), _outputs(logits=s), [])["loss_kd_logit"]
    # reference: (N, A*K, H, W) -> (N*H*W*A, K)
    ref = sigmoid_kd_loss(
        s[0].view(2, a, k, 4, 4).permute(0, 3, 4, 1, 2).reshape(-1, k),
        t[0].view(2, a, k, 4, 4).permute(0, 3, 4, 1, 2).reshape(-1, k),
        1.0,
    )
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # normalisation: summed over classes, averaged over the N*H*W*A anchors (not the elements)
    elementwise = F.binary_cross_entropy_with_logits(s[0], t[0].sigmoid(), reduction="sum")
    elementwise -= F.binary_cross_entropy_with_logits(t[0], t[0].sigmoid(), reduction="sum")
    assert got.item() == pytest.approx(elementwise.item() / (2 * 4 * 4 * a), rel=1e-5)
    assert got.item() > 0


def test_unknown_distiller_lists_registered_names():
    with pytest.raises(KeyError) as e:
        build_distillers(None, ["NoSuchKD"], None, None)
    assert "NoSuchKD" in str(e.value) and "FitNet" in str(e.value) and "LogitKD" in str(e.value)
