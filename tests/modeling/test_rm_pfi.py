"""RM (rank mimicking) and PFI (prediction-guided feature imitation), from the spec: formulas
against simple per-GT / per-location references, invariances, gradients and build-time checks.
Synthetic tensors only (no model), so each test takes milliseconds."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec

from kd_det2.config import get_kd_cfg
from kd_det2.modeling.distillers import PFI, RM
from kd_det2.modeling.distillers.base import cat_dense_levels
from kd_det2.modeling.distillers.rm_pfi import (
    gather_dense,
    pfi_weight,
    positive_groups,
    rank_mimic_loss,
    segment_log_softmax,
)
from kd_det2.modeling.outputs import DetectorOutputs, ModelSpec

LEVELS = ["p3", "p4", "p5"]
SIZES = [(4, 5), (2, 3), (1, 2)]


# ------------------------------------------------------------------------------------ helpers
def outputs(cls_logits, assignment=None, features=None, ctrness=None):
    predictions = {"cls_logits": cls_logits}
    if ctrness is not None:
        predictions["ctrness"] = ctrness
    return DetectorOutputs(
        images=None,
        backbone={},
        features=features or {},
        head_in_features=list(LEVELS),
        predictions=predictions,
        assignment=assignment,
    )


def random_levels(n, a, k, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, a * k, h, w, generator=g) * 2).requires_grad_(requires_grad)
        for h, w in SIZES
    ]


def anchor_location(r, a):
    """Anchor index r (order level, y, x, anchor) -> (level, y, x, anchor)."""
    for level, (h, w) in enumerate(SIZES):
        if r < h * w * a:
            return level, r // a // w, r // a % w, r % a
        r -= h * w * a
    raise IndexError(r)


def random_assignment(n, a, k, num_gts, seed, background_share=0.6):
    """Random label assignment: each anchor background or one of ``num_gts[i]`` GTs (random
    classes per GT); some GTs get one positive only."""
    g = torch.Generator().manual_seed(seed)
    r = sum(h * w for h, w in SIZES) * a
    labels = torch.full((n, r), k, dtype=torch.long)
    index = torch.full((n, r), -1, dtype=torch.long)
    for i in range(n):
        if not num_gts[i]:
            continue
        classes = torch.randint(0, k, (num_gts[i],), generator=g)
        fg = torch.rand(r, generator=g) > background_share
        gts = torch.randint(0, num_gts[i], (r,), generator=g)
        index[i, fg] = gts[fg]
        labels[i, fg] = classes[gts[fg]]
    return {"gt_labels": labels, "gt_index": index}


def reference_rm(s_levels, t_levels, assignment, k, a, tau=1.0, space="logit", channel=None):
    """Per-GT loop: sum over GTs with >= 2 positives of KL(softmax(t/tau) || softmax(s/tau)),
    tau^2, divided by their number."""
    labels, index = assignment["gt_labels"], assignment["gt_index"]
    total, groups = 0.0, 0
    for i in range(labels.shape[0]):
        for gt in sorted(set(index[i][index[i] >= 0].tolist())):
            anchors = (index[i] == gt).nonzero().flatten().tolist()
            if len(anchors) < 2:
                continue
            s, t = [], []
            for r in anchors:
                level, y, x, j = anchor_location(r, a)
                c = labels[i, r].item() if channel is None else channel
                kk = k if channel is None else 1
                s.append(s_levels[level][i, j * kk + c, y, x])
                t.append(t_levels[level][i, j * kk + c, y, x])
            s, t = torch.stack(s).double(), torch.stack(t).double()
            if space == "prob":
                s, t = s.sigmoid(), t.sigmoid()
            p_t = F.softmax(t / tau, dim=0)
            total = total + (p_t * (p_t.log() - F.log_softmax(s / tau, dim=0))).sum()
            groups += 1
    return total * tau**2 / max(groups, 1)


def spec(arch="RetinaNet", num_classes=3, num_anchors=9, channels=16, levels=LEVELS):
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    return ModelSpec(
        kind="dense",
        arch=arch,
        num_classes=num_classes,
        backbone_shapes={},
        feature_shapes={f: ShapeSpec(channels=channels, stride=strides[f]) for f in strides},
        head_in_features=list(levels),
        tower_channels={},
        num_anchors=num_anchors,
        arch_bases=(arch,),
    )


# ----------------------------------------------------------------------------- rank mimicking
def test_segment_log_softmax_equals_log_softmax_per_group():
    x = torch.randn(20) * 30  # large values: the group maximum must be subtracted
    group = torch.randint(0, 5, (20,))
    out = segment_log_softmax(x, group, 5)
    for g in range(5):
        m = group == g
        if m.any():
            torch.testing.assert_close(out[m], F.log_softmax(x[m], dim=0))


@pytest.mark.parametrize("tau,space", [(1.0, "logit"), (2.0, "logit"), (0.5, "prob")])
def test_vectorised_rm_equals_per_gt_loop_with_nine_anchors(tau, space):
    k, a = 4, 9
    s_levels, t_levels = random_levels(3, a, k, 0), random_levels(3, a, k, 1)
    assignment = random_assignment(3, a, k, num_gts=(5, 0, 40), seed=2)
    rm = RM(num_classes=k, temperature=tau, score_space=space)
    out = rm(outputs(t_levels), outputs(s_levels, assignment), [None] * 3)
    expected = reference_rm(s_levels, t_levels, assignment, k, a, tau, space)
    assert float(expected) > 1e-3
    torch.testing.assert_close(out["loss_kd_rm_cls"].double(), expected, rtol=1e-5, atol=1e-7)
    assert set(out) == {"loss_kd_rm_cls"}  # RetinaNet-like: no quality term


def test_rm_is_zero_for_equal_scores_and_per_gt_shifts_in_logit_space():
    k, a = 3, 9
    t_levels = random_levels(2, a, k, 0)
    assignment = random_assignment(2, a, k, num_gts=(6, 4), seed=1)
    rm = RM(num_classes=k)
    teacher = outputs(t_levels)

    def loss(s_levels, **kw):
        return RM(num_classes=k, **kw)(teacher, outputs(s_levels, assignment), [])["loss_kd_rm_cls"]

    assert loss(t_levels).abs() < 1e-6
    # a constant per (image, GT) added to the GT-class logit of its positives
    shifted = [x.clone() for x in t_levels]
    shift = torch.randn(2, 6) * 3
    labels, index = assignment["gt_labels"], assignment["gt_index"]
    for i, r in (index >= 0).nonzero().tolist():
        level, y, x, j = anchor_location(r, a)
        shifted[level][i, j * k + labels[i, r], y, x] += shift[i, index[i, r]]
    assert loss(shifted).abs() < 1e-5
    # the same shift is not invisible to the probability space, nor is a non-constant change
    assert loss(shifted, score_space="prob") > 1e-4
    noisy = [x + torch.randn_like(x) for x in t_levels]
    assert rm(teacher, outputs(noisy, assignment), [])["loss_kd_rm_cls"] > 1e-3


def test_a_gt_with_one_positive_adds_nothing():
    s, t = torch.randn(7), torch.randn(7)
    group = torch.tensor([0, 0, 0, 5, 9, 9, 9])  # group 5 has one positive
    loss, ranked = rank_mimic_loss(s, t, group)
    keep = group != 5
    alone, ranked_alone = rank_mimic_loss(s[keep], t[keep], group[keep])
    assert ranked == ranked_alone == 2
    torch.testing.assert_close(loss, alone)
    s2 = s.clone()
    s2[3] += 10.0
    torch.testing.assert_close(rank_mimic_loss(s2, t, group)[0], loss)
    # only singletons: exactly zero, and no division by zero
    single, n = rank_mimic_loss(s[:2], t[:2], torch.tensor([0, 1]))
    assert n == 0 and single.item() == 0.0


def test_permuting_anchors_inside_a_group_changes_nothing_but_their_identity_matters():
    s, t = torch.randn(9), torch.randn(9)
    group = torch.tensor([3, 1, 3, 3, 1, 2, 2, 3, 1])
    loss = rank_mimic_loss(s, t, group)[0]
    perm = torch.randperm(9)
    torch.testing.assert_close(rank_mimic_loss(s[perm], t[perm], group[perm])[0], loss)
    # teacher and student rank the same scores in opposite anchor order: sorting each side on
    # its own (as the public mmrazor PR does) would give 0; the anchors' identity is kept here
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])
    reversed_loss, _ = rank_mimic_loss(t.flip(0), t, torch.zeros(4, dtype=torch.long))
    assert reversed_loss > 0.5


def test_rm_reductions_and_temperature_scaling():
    s, t = torch.randn(10), torch.randn(10)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])  # G+ = {0, 1, 3}: 9 anchors
    per_gt, n = rank_mimic_loss(s, t, group, reduction="gt")
    per_anchor, _ = rank_mimic_loss(s, t, group, reduction="anchor")
    assert n == 3
    torch.testing.assert_close(per_anchor * 9, per_gt * 3)
    scaled, _ = rank_mimic_loss(s, t, group, temperature=2.0)
    plain, _ = rank_mimic_loss(s, t, group, temperature=2.0, scale_by_t2=False)
    torch.testing.assert_close(scaled, 4 * plain)
    assert (rank_mimic_loss(s, t, group, temperature=2.0)[0] - per_gt).abs() > 1e-4


def test_rm_quality_term_on_centerness():
    k = 3
    s_levels, t_levels = random_levels(2, 1, k, 0), random_levels(2, 1, k, 1)
    s_ctr, t_ctr = random_levels(2, 1, 1, 2), random_levels(2, 1, 1, 3)
    assignment = random_assignment(2, 1, k, num_gts=(3, 2), seed=4, background_share=0.3)
    rm = RM(num_classes=k, loss_weight=2.0, quality="ctrness", quality_weight=0.5)
    out = rm(outputs(t_levels, ctrness=t_ctr), outputs(s_levels, assignment, ctrness=s_ctr), [])
    cls = reference_rm(s_levels, t_levels, assignment, k, 1)
    quality = reference_rm(s_ctr, t_ctr, assignment, k, 1, channel=0)
    assert float(cls) > 1e-3 and float(quality) > 1e-3
    torch.testing.assert_close(out["loss_kd_rm_cls"].double(), 2.0 * cls, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["loss_kd_rm_quality"].double(), quality, rtol=1e-5, atol=0)
    off = RM(num_classes=k, quality="ctrness", quality_weight=0.0)
    assert set(off(outputs(t_levels), outputs(s_levels, assignment), [])) == {"loss_kd_rm_cls"}


def test_rm_without_gt_is_finite_zero_and_teacher_gets_no_gradient():
    k, a = 3, 9
    s_levels = random_levels(2, a, k, 0, requires_grad=True)
    t_levels = random_levels(2, a, k, 1, requires_grad=True)
    empty = random_assignment(2, a, k, num_gts=(0, 0), seed=0)
    loss = RM(num_classes=k)(outputs(t_levels), outputs(s_levels, empty), [])["loss_kd_rm_cls"]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assignment = random_assignment(2, a, k, num_gts=(4, 3), seed=0)
    loss = RM(num_classes=k)(outputs(t_levels), outputs(s_levels, assignment), [])
    loss["loss_kd_rm_cls"].backward()
    assert all(x.grad is None for x in t_levels)
    assert sum(x.grad.abs().sum() for x in s_levels) > 0


def test_gather_dense_equals_indexing_the_concatenated_levels():
    k, a = 4, 9
    levels = random_levels(2, a, k, 0, requires_grad=True)
    r = sum(h * w for h, w in SIZES) * a
    image, anchor = torch.randint(0, 2, (50,)), torch.randint(0, r, (50,))
    channel = torch.randint(0, k, (50,))
    out = gather_dense(levels, k, image, anchor, channel)
    torch.testing.assert_close(out, cat_dense_levels(levels, k)[image, anchor, channel])
    out.sum().backward()
    assert sum(int((x.grad != 0).sum()) for x in levels) == len(
        set(zip(image.tolist(), anchor.tolist(), channel.tolist()))
    )


def test_positive_groups_ignore_background_and_ignored_anchors():
    labels = torch.tensor([[0, 3, -1, 2, 2], [1, 1, 3, 3, 3]])  # K = 3
    index = torch.tensor([[1, -1, -1, 0, 0], [2, 2, -1, -1, -1]])
    image, anchor, cls, group = positive_groups({"gt_labels": labels, "gt_index": index}, 3)
    assert image.tolist() == [0, 0, 0, 1, 1] and anchor.tolist() == [0, 3, 4, 0, 1]
    assert cls.tolist() == [0, 2, 2, 1, 1]
    assert group.tolist() == [1, 0, 0, 5, 5]  # image * (max gt index + 1) + gt index


def test_rm_requires_the_students_assignment():
    levels = random_levels(1, 1, 3, 0)
    with pytest.raises(ValueError, match="label assignment"):
        RM(num_classes=3)(outputs(levels), outputs(levels), [])


# ---------------------------------------------------------------- prediction-guided imitation
def pfi(**kw):
    channels = kw.pop("channels", (16, 16))
    return PFI(
        head_in_features=LEVELS,
        student_channels={f: channels[0] for f in LEVELS},
        teacher_channels={f: channels[1] for f in LEVELS},
        **kw,
    )


def random_features(n, c, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return {
        f: torch.randn(n, c, h, w, generator=g).requires_grad_(requires_grad)
        for f, (h, w) in zip(LEVELS, SIZES)
    }


def test_pfi_equals_the_per_location_formula_with_nine_anchors():
    k, a, n = 3, 9, 2
    s_logits, t_logits = random_levels(n, a, k, 0), random_levels(n, a, k, 1)
    fs, ft = random_features(n, 16, 2), random_features(n, 16, 3)
    for norm in ("none", "level_mean"):
        out = pfi(normalize_weight=norm)(
            outputs(t_logits, features=ft), outputs(s_logits, features=fs), []
        )
        expected = 0.0
        for i, f in enumerate(LEVELS):
            h, w = SIZES[i]
            d = torch.zeros(n, h, w)
            for b in range(n):
                for y in range(h):
                    for x in range(w):
                        p_s = s_logits[i][b, :, y, x].view(a, k).sigmoid()
                        p_t = t_logits[i][b, :, y, x].view(a, k).sigmoid()
                        d[b, y, x] = ((p_t - p_s) ** 2).sum() / (a * k)
            if norm == "level_mean":
                d = d / d.mean()
            e = ((ft[f] - fs[f]) ** 2).mean(dim=1)
            expected += (d * e).sum() / (n * h * w)
        torch.testing.assert_close(out["loss_kd_pfi"], expected)


def test_pfi_is_zero_where_predictions_agree_and_mse_for_a_constant_weight():
    fs, ft = random_features(2, 16, 0), random_features(2, 16, 1)
    logits = random_levels(2, 9, 3, 0)
    for norm in ("none", "level_mean"):
        same = pfi(normalize_weight=norm)(
            outputs(logits, features=ft), outputs(logits, features=fs), []
        )
        assert same["loss_kd_pfi"].item() == 0.0
    # agreement at one location only: that location's feature error does not count
    s_logits = [x + 1.0 for x in logits]
    s_logits[0][:, :, 0, 0] = logits[0][:, :, 0, 0]
    fs2 = {f: v.clone() for f, v in fs.items()}
    fs2["p3"][:, :, 0, 0] += 100.0
    model = pfi(normalize_weight="none")
    torch.testing.assert_close(
        model(outputs(logits, features=ft), outputs(s_logits, features=fs2), [])["loss_kd_pfi"],
        model(outputs(logits, features=ft), outputs(s_logits, features=fs), [])["loss_kd_pfi"],
    )
    # constant D (every logit differs by the same amount from 0): plain MSE summed over levels
    zeros = [torch.zeros_like(x) for x in logits]
    ones = [torch.ones_like(x) for x in logits]
    mse = sum(F.mse_loss(fs[f], ft[f]) for f in LEVELS)
    out = pfi()(outputs(ones, features=ft), outputs(zeros, features=fs), [])
    torch.testing.assert_close(out["loss_kd_pfi"], mse)
    out = pfi(normalize_weight="none", loss_weight=2.0)(
        outputs(ones, features=ft), outputs(zeros, features=fs), []
    )
    c = (torch.sigmoid(torch.tensor(1.0)) - 0.5) ** 2
    torch.testing.assert_close(out["loss_kd_pfi"], 2.0 * c * mse)


def test_pfi_weight_options():
    s, t = torch.randn(2, 6, 3, 4), torch.randn(2, 6, 3, 4)
    sq, tq = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    torch.testing.assert_close(pfi_weight(s, t, "logit", 2.0), ((t - s) ** 2).mean(dim=1))
    torch.testing.assert_close(
        pfi_weight(s, t, "prob", 1.0), (t.sigmoid() - s.sigmoid()).abs().mean(dim=1)
    )
    torch.testing.assert_close(
        pfi_weight(s, t, "prob", 2.0, sq, tq),
        pfi_weight(s, t) + ((tq.sigmoid() - sq.sigmoid()) ** 2)[:, 0],
    )
    assert pfi_weight(s, t).shape == (2, 3, 4)


@pytest.mark.parametrize("detach", [True, False])
def test_pfi_gradients(detach):
    s_logits = random_levels(2, 1, 3, 0, requires_grad=True)
    t_logits = random_levels(2, 1, 3, 1, requires_grad=True)
    fs, ft = random_features(2, 8, 0, True), random_features(2, 16, 1, True)
    model = pfi(channels=(8, 16), detach_weight=detach)
    loss = model(outputs(t_logits, features=ft), outputs(s_logits, features=fs), [])
    loss["loss_kd_pfi"].backward()
    assert all(x.grad is None for x in t_logits) and all(x.grad is None for x in ft.values())
    assert all(x.grad.abs().sum() > 0 for x in fs.values())
    assert all(p.grad.abs().sum() > 0 for p in model.adapters.parameters())
    if detach:  # the student's logits get nothing through the weight
        assert all(x.grad is None for x in s_logits)
    else:
        assert all(x.grad.abs().sum() > 0 for x in s_logits)


def test_pfi_adapters_and_levels():
    assert all(isinstance(m, torch.nn.Identity) for m in pfi().adapters.values())
    assert all(isinstance(m, torch.nn.Conv2d) for m in pfi(always_adapt=True).adapters.values())
    model = pfi(in_features=["p4"])
    assert model.levels == {"p4": ("p4", 1)}
    fs, ft = random_features(2, 16, 0), random_features(2, 16, 1)
    s_logits, t_logits = random_levels(2, 1, 3, 0), random_levels(2, 1, 3, 1)
    out = model(outputs(t_logits, features=ft), outputs(s_logits, features=fs), [])
    d = pfi_weight(s_logits[1], t_logits[1])
    expected = (d / d.mean() * ((fs["p4"] - ft["p4"]) ** 2).mean(dim=1)).mean()
    torch.testing.assert_close(out["loss_kd_pfi"], expected)
    # a teacher whose head levels have other names: matched by position in the head
    renamed = PFI(
        head_in_features=LEVELS,
        teacher_head_in_features=["a", "b", "c"],
        in_features=["p4"],
        student_channels={f: 16 for f in LEVELS},
        teacher_channels={"a": 8, "b": 16, "c": 8},
    )
    assert renamed.levels == {"p4": ("b", 1)}
    teacher = outputs(t_logits, features={"b": ft["p4"]})
    torch.testing.assert_close(
        renamed(teacher, outputs(s_logits, features=fs), [])["loss_kd_pfi"], expected
    )


def test_pfi_quality_adds_centerness_difference():
    s_logits, t_logits = random_levels(2, 1, 3, 0), random_levels(2, 1, 3, 0)  # equal classes
    s_ctr, t_ctr = random_levels(2, 1, 1, 1), random_levels(2, 1, 1, 2)
    fs, ft = random_features(2, 16, 0), random_features(2, 16, 1)
    teacher = outputs(t_logits, features=ft, ctrness=t_ctr)
    student = outputs(s_logits, features=fs, ctrness=s_ctr)
    assert pfi()(teacher, student, [])["loss_kd_pfi"].item() == 0.0
    assert pfi(quality="ctrness")(teacher, student, [])["loss_kd_pfi"] > 1e-3


# --------------------------------------------------------------------------------- building
def test_defaults_and_build_checks():
    cfg = get_kd_cfg()
    assert cfg.MODEL.KD.RM.SCORE_SPACE == "logit" and cfg.MODEL.KD.RM.TEMPERATURE == 1.0
    assert cfg.MODEL.KD.PFI.NORMALIZE_WEIGHT == "level_mean" and cfg.MODEL.KD.PFI.DETACH_WEIGHT
    rm = RM(cfg, spec("FCOS", num_anchors=1), spec("FCOS", num_anchors=1))
    assert rm.quality == "ctrness" and rm.temperature == 1.0
    assert RM(cfg, spec(), spec()).quality is None
    with pytest.raises(ValueError, match="classes"):
        RM(cfg, spec(num_classes=3), spec(num_classes=4))
    with pytest.raises(ValueError, match="quality branch"):
        RM(cfg, spec("FCOS", num_anchors=1), spec("GFL", num_anchors=1))
    with pytest.raises(ValueError, match="same anchors"):
        PFI(cfg, spec(num_anchors=9), spec(num_anchors=1))
    model = PFI(cfg, spec(channels=8), spec(channels=16))
    assert list(model.levels) == LEVELS and isinstance(model.adapters["p3"], torch.nn.Conv2d)
    cfg.MODEL.KD.PFI.IN_FEATURES = ["p2"]
    with pytest.raises(ValueError, match="does not read"):
        PFI(cfg, spec(), spec())
    for key, value in (("RM.SCORE_SPACE", "rank"), ("RM.REDUCTION", "sum")):
        bad = get_kd_cfg()
        bad.merge_from_list([f"MODEL.KD.{key}", value])
        with pytest.raises(ValueError, match=key.split(".")[1]):
            RM(bad, spec(), spec())
    bad = get_kd_cfg()
    bad.MODEL.KD.PFI.NORMALIZE_WEIGHT = "global"
    with pytest.raises(ValueError, match="NORMALIZE_WEIGHT"):
        PFI(bad, spec(), spec())
    assert math.isclose(get_kd_cfg().MODEL.KD.PFI.DIFF_POWER, 2.0)
