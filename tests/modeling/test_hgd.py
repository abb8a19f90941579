"""HGD distiller (kd_det2.modeling.distillers.hgd), written from the spec (docs/HGD.md)."""

import copy
from unittest import mock

import pytest
import torch
from conftest import kd_cfg, make_batch, tiny_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from torch import nn

from kd_det2.modeling.distillers import HGD
from kd_det2.modeling.distillers import hgd as hgd_module
from kd_det2.modeling.distillers.hgd import (
    discrepancy,
    instance_mask,
    micro_weights,
    model_taps,
    stage_correspondence,
    standardize,
)
from kd_det2.modeling.outputs import DetectorOutputs, ModelSpec
from kd_det2.modeling.stages import named_stages

R4 = ["res2", "res3", "res4", "res5"]


# ------------------------------------------------------------------ a backbone of another family
class TinyStages(Backbone):
    """Another backbone family: stages "c2".."c5" (strides 4-32, widths 16/24/40/80) with two
    taps at stride 16 ("c4a", then "c4"), and the stage protocol (``named_stages``)."""

    def __init__(self, expose_stages: bool = True):
        super().__init__()

        def conv(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

        self.stem = conv(3, 16, 4)
        self.c2, self.c3 = conv(16, 16, 1), conv(16, 24, 2)
        self.c4a, self.c4, self.c5 = conv(24, 40, 2), conv(40, 40, 1), conv(40, 80, 2)
        self._names = ["c2", "c3", "c4a", "c4", "c5"]
        self._shapes = dict(zip(self._names, [(16, 4), (24, 8), (40, 16), (40, 16), (80, 32)]))
        self.expose_stages = expose_stages

    def named_stages(self):
        if not self.expose_stages:
            return None
        return [(n, getattr(self, n)) for n in self._names]

    def forward(self, x):
        out, x = {}, self.stem(x)
        for name in self._names:
            x = out[name] = getattr(self, name)(x)
        return out

    def output_shape(self):
        return {n: ShapeSpec(channels=c, stride=s) for n, (c, s) in self._shapes.items()}


class TinyStagesNoProtocol(TinyStages):
    named_stages = None  # not callable: the backbone does not follow the stage protocol


def _tiny_fpn(cfg, input_shape, cls=TinyStages):
    out = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=cls(),
        in_features=["c3", "c4", "c5"],
        out_channels=out,
        top_block=LastLevelP6P7(out, out, in_feature="p5"),
    )


def tiny_stages_fpn(cfg, input_shape):
    return _tiny_fpn(cfg, input_shape, TinyStages)


def tiny_plain_fpn(cfg, input_shape):
    return _tiny_fpn(cfg, input_shape, TinyStagesNoProtocol)


for _fn in (tiny_stages_fpn, tiny_plain_fpn):
    if _fn.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(_fn)


# --------------------------------------------------------------------------------- helpers
def spec_of(cfg) -> ModelSpec:
    """The ModelSpec fields HGD reads, from the backbone of a config."""
    backbone = build_backbone(cfg)
    stages = named_stages(backbone.bottom_up) or []
    return ModelSpec(
        kind="dense",
        arch="FCOS",
        num_classes=3,
        backbone_shapes=dict(backbone.bottom_up.output_shape()),
        feature_shapes=dict(backbone.output_shape()),
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        tower_channels={},
        num_anchors=1,
        stage_order=tuple(n for n, _ in stages),
    )


def resnet_cfg(depth, out_features=R4, fpn=32):
    cfg = tiny_cfg("FCOS", depth, fpn)
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    return cfg


def outputs(backbone, features, size=32, n=2):
    images = ImageList(torch.zeros(n, 3, size, size), [(size, size)] * n)
    return DetectorOutputs(images, backbone, features, head_in_features=list(features))


def _hgd(**kw):
    taps = {"backbone": {"res3": (8, 8), "res4": (16, 16)}, "neck": {"p3": (8, 8)}}
    return HGD(student_taps=taps, teacher_taps=copy.deepcopy(taps), **kw)


def _maps(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    backbone = {"res3": torch.randn(n, 8, 4, 4, generator=g)}
    backbone["res4"] = torch.randn(n, 16, 2, 2, generator=g)
    return backbone, {"p3": torch.randn(n, 8, 4, 4, generator=g)}


def gts(boxes_per_image):
    batch = make_batch(n=len(boxes_per_image), size=32, boxes_per_image=boxes_per_image)
    return [x["instances"] for x in batch]


# ----------------------------------------------------------------------------- correspondence
def test_correspondence_r101_to_r18_by_stride_with_adapters_per_pair():
    student, teacher = spec_of(resnet_cfg(18)), spec_of(resnet_cfg(101, fpn=64))
    pairs = stage_correspondence(model_taps(student), model_taps(teacher))
    got = [(p.group, p.student, p.teacher, p.stride, p.student_channels, p.teacher_channels)
           for p in pairs]  # fmt: skip
    assert got == [
        ("backbone", "res2", "res2", 4, 64, 256),
        ("backbone", "res3", "res3", 8, 128, 512),
        ("backbone", "res4", "res4", 16, 256, 1024),
        ("backbone", "res5", "res5", 32, 512, 2048),
    ] + [("neck", f"p{i}", f"p{i}", 2**i, 32, 64) for i in range(3, 8)]
    hgd = HGD(student_taps=model_taps(student), teacher_taps=model_taps(teacher))
    conv, norm = hgd.adapters["res3"]  # bottom-up: 1x1 conv + BN
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (128, 512, (1, 1))
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 512
    assert isinstance(hgd.adapters["p5"], nn.Conv2d) and hgd.adapters["p5"].out_channels == 64
    assert hgd.term_names == ["res2", "res3", "res4", "res5", "p3", "p4", "p5", "p6", "p7"]


def test_correspondence_r101_to_r50_has_identity_initialised_adapters():
    student, teacher = spec_of(resnet_cfg(50)), spec_of(resnet_cfg(101))
    hgd = HGD(student_taps=model_taps(student), teacher_taps=model_taps(teacher))
    assert [p.teacher_channels for p in hgd.pairs[:4]] == [256, 512, 1024, 2048]
    x = torch.randn(2, 32, 5, 5)
    assert torch.equal(hgd.adapters["p4"](x), x)  # neck: identity conv, no norm
    conv = hgd.adapters["res4"][0]
    assert torch.equal(conv.weight[:, :, 0, 0], torch.eye(1024))


def test_correspondence_across_backbone_families_takes_the_last_tap_of_a_stride():
    student = spec_of(resnet_cfg(18, out_features=["res3", "res4", "res5"]))
    cfg = tiny_cfg("FCOS", 18, 32)
    cfg.MODEL.BACKBONE.NAME = "tiny_stages_fpn"
    other = spec_of(cfg)
    pairs = stage_correspondence(model_taps(other), model_taps(student))
    assert [(p.student, p.teacher, p.student_channels, p.teacher_channels) for p in pairs] == [
        ("c3", "res3", 24, 128),  # c2 (stride 4) has no teacher tap: skipped
        ("c4", "res4", 40, 256),  # c4a and c4 share stride 16: the last, c4
        ("c5", "res5", 80, 512),
    ] + [(f"p{i}", f"p{i}", 32, 32) for i in range(3, 8)]
    back = stage_correspondence(model_taps(student), model_taps(other), groups=["backbone"])
    assert [(p.student, p.teacher) for p in back] == [
        ("res3", "c3"),
        ("res4", "c4"),
        ("res5", "c5"),
    ]


def test_stage_list_restricts_the_pairs_and_bad_names_are_clear_errors():
    taps = model_taps(spec_of(resnet_cfg(18)))
    teacher = model_taps(spec_of(resnet_cfg(18, out_features=["res3", "res4", "res5"])))
    pairs = stage_correspondence(taps, teacher, stages=["p3", "res4"])
    assert [(p.group, p.student) for p in pairs] == [("backbone", "res4"), ("neck", "p3")]
    with pytest.raises(ValueError, match=r"\['res9'\].*res2 \(stride 4\)"):
        stage_correspondence(taps, teacher, stages=["res9"])
    with pytest.raises(ValueError, match="'res2' \\(stride 4\\).*no backbone tap"):
        stage_correspondence(taps, teacher, stages=["res2"])
    with pytest.raises(ValueError, match="not student taps of the groups"):
        stage_correspondence(taps, teacher, stages=["p3"], groups=["backbone"])


def test_no_corresponding_stage_is_an_error_naming_both_sides():
    student = {"backbone": {"c2": (16, 4)}}
    teacher = {"backbone": {"res3": (128, 8), "res4": (256, 16)}}
    with pytest.raises(ValueError, match=r"c2 \(stride 4\).*res3 \(stride 8\), res4"):
        stage_correspondence(student, teacher)


def test_extra_res2_output_is_tolerated_by_the_fpn_builders_and_paired(tmp_path):
    cfg = kd_cfg(tmp_path, "RetinaNet", distillers=["HGD"])
    cfg.MODEL.RESNETS.OUT_FEATURES = R4  # the FPN still reads res3-res5
    opts = ["MODEL.RESNETS.OUT_FEATURES", str(R4)]
    cfg.MODEL.KD.TEACHER.OPTS = opts
    model = build_model(cfg)
    assert model.student.backbone.in_features == ("res3", "res4", "res5")
    assert [p.student for p in model.distillers["HGD"].pairs][:4] == R4
    model.train()
    with EventStorage():
        losses = model(make_batch(size=64))
    assert torch.isfinite(losses["loss_kd_hgd"])


# --------------------------------------------------------------------------------- imitation
def test_zero_loss_for_identical_normalised_features_in_every_weighting_mode():
    backbone, features = _maps()
    scaled = {k: 3.0 * v + 0.7 for k, v in backbone.items()}  # a positive per-channel affine
    modes = [
        {},
        {"macro": "fixed"},
        {"micro": False},
        {"focus_exponent": 0.0},
        {"focus_exponent": 2.0, "instance_balanced": False},
    ]
    gt = gts((2, 0))
    for kw in modes:
        hgd = _hgd(**kw).train()
        t = outputs(scaled, features)
        same = hgd(t, outputs(backbone, features), gt)["loss_kd_hgd"]
        assert abs(same.item()) < 1e-6, kw
        other = hgd(t, outputs(*_maps(seed=1)), gt)["loss_kd_hgd"]
        assert other.item() > 1e-2, kw
    assert discrepancy(backbone["res3"], scaled["res3"]).abs().max() < 1e-6
    assert discrepancy(backbone["res3"], scaled["res3"], normalize=False).min() > 0.1


def test_standardize_is_per_image_and_channel_over_space():
    x = torch.randn(2, 3, 4, 5) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 2
    y = standardize(x)
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(y.std(dim=(2, 3), correction=0), torch.ones(2, 3), atol=1e-3)
    spec = (x - x.mean(dim=(2, 3), keepdim=True)) / (
        x.std(dim=(2, 3), keepdim=True, correction=0) + 1e-5
    )
    assert torch.allclose(standardize(x, std_floor=0.0), spec, atol=1e-5)
    z = standardize(torch.cat([x[:1], 10 * x[1:]]), std_floor=0.0)  # the other image's scale
    assert torch.allclose(z, y, atol=1e-3)  # changes nothing (up to the 1e-5 of N(.))


def test_std_floor_bounds_the_gradient_of_flat_channels_and_keeps_one_by_one_maps_finite():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 4, 3, 3, generator=g)
    x = torch.randn(2, 4, 3, 3, generator=g)
    x[0, 0] = 1.0 + 1e-4 * torch.randn(3, 3, generator=g)  # flat in image 0 only
    x[:, 1] = 0.5  # dead in the whole batch
    grads = {}
    for floor in (0.0, 0.1):
        s = x.clone().requires_grad_()
        discrepancy(s, t, std_floor=floor).sum().backward()
        assert torch.isfinite(s.grad).all()
        grads[floor] = s.grad
    assert grads[0.0][0, 0].abs().max() > 1e3 and grads[0.0][:, 1].abs().max() > 1e4
    assert grads[0.1][0, 0].abs().max() < 50 and grads[0.1][:, 1].abs().max() < 2e3
    assert torch.allclose(grads[0.1][1, 2:], grads[0.0][1, 2:], atol=1e-4)  # others: unchanged
    one = torch.randn(2, 4, 1, 1, requires_grad=True)
    d = discrepancy(one, torch.randn(2, 4, 1, 1))
    d.sum().backward()
    assert d.abs().max() == 0 and torch.equal(one.grad, torch.zeros_like(one))


def test_term_is_mean_over_images_of_micro_weighted_discrepancy_by_hand():
    backbone, features = _maps()
    t_backbone, t_features = _maps(seed=3)
    hgd = _hgd(macro="fixed", loss_weight=2.0).eval()
    gt = gts((2, 1))
    loss = hgd(outputs(t_backbone, t_features), outputs(backbone, features), gt)["loss_kd_hgd"]
    sizes = [(32, 32)] * 2
    boxes = [x.gt_boxes.tensor for x in gt]
    expected = 0.0
    for s, t, stride in (
        (backbone["res3"], t_backbone["res3"], 8),
        (backbone["res4"], t_backbone["res4"], 16),
        (features["p3"], t_features["p3"], 8),
    ):
        d = ((standardize(t) - standardize(s)) ** 2).mean(dim=1)
        m = micro_weights(d, boxes, sizes, stride)
        expected += (m * d).sum() / 2
    assert torch.allclose(loss, 2.0 * expected, rtol=1e-5)


def test_spatial_mismatch_resizes_the_adapted_student_map_bilinearly():
    hgd = _hgd(groups=["neck"], macro="fixed")
    _, features = _maps()
    student = {"p3": torch.nn.functional.interpolate(features["p3"], size=(5, 5))}
    loss = hgd(outputs({}, features), outputs({}, student), gts((1, 1)))["loss_kd_hgd"]
    assert torch.isfinite(loss) and loss > 0


# ------------------------------------------------------------------------------------- micro
def _reference_mask(boxes, stride, h, w, balanced=True, min_area=1.0):
    """A loop over boxes and cells, written from the spec."""
    mask = torch.zeros(h, w)
    for x0, y0, x1, y1 in boxes.tolist():
        cells = [
            (i, j)
            for i in range(h)
            for j in range(w)
            if x0 <= (j + 0.5) * stride < x1 and y0 <= (i + 0.5) * stride < y1
        ]
        if not cells:
            cx, cy = int((x0 + x1) / 2 / stride), int((y0 + y1) / 2 / stride)
            cells = [(min(cy, h - 1), min(cx, w - 1))]
        for i, j in cells:
            mask[i, j] += 1.0 / len(cells) if balanced else 1.0
    return mask.clamp(max=1.0 / min_area) if balanced else (mask > 0).float()


def test_instance_mask_gives_each_instance_equal_total_mass():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 48.0], [70.0, 70.0, 75.0, 74.0], [100.0, 8, 124, 40]])
    mask = instance_mask(boxes, 8, 16, 16)
    per_box = [mask[int(y0) // 8 : -(-int(y1) // 8), int(x0) // 8 : -(-int(x1) // 8)].sum()
               for x0, y0, x1, y1 in boxes.tolist()]  # fmt: skip
    assert torch.allclose(torch.stack(per_box), torch.ones(3))  # 48, 1 and 12 cells
    assert mask.sum().item() == pytest.approx(3.0)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[0:6, 0:8] = inside[9, 9] = inside[1:5, 12:15] = True
    assert (mask[~inside] == 0).all() and (mask[inside] > 0).all()
    binary = instance_mask(boxes, 8, 16, 16, instance_balanced=False)
    assert torch.equal(binary, inside.float())


def test_instance_mask_matches_a_loop_reference_with_overlaps_clipping_and_tiny_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 40 + 1], dim=1)
    for stride, h, w in ((4, 32, 30), (16, 8, 8)):
        for balanced, min_area in ((True, 1.0), (True, 4.0), (False, 1.0)):
            got = instance_mask(boxes, stride, h, w, balanced, min_area)
            ref = _reference_mask(boxes, stride, h, w, balanced, min_area)
            assert torch.allclose(got, ref, atol=1e-6), (stride, balanced, min_area)


def test_masks_have_no_python_loop_over_gt_boxes():
    def op_count(num_boxes):
        boxes = torch.tensor([[8.0, 8.0, 40.0, 30.0]]).repeat(num_boxes, 1)
        boxes[::2, 2:] = 9.0  # half of them too small to hold a cell centre
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            instance_mask(boxes, 8, 8, 8)
            micro_weights(torch.rand(1, 8, 8), [boxes], [(64, 64)], 8)
        return len(prof.events())

    assert op_count(2) == op_count(40)


def test_micro_weights_sum_to_a_plus_b_and_padding_and_focus():
    d = torch.rand(2, 8, 8, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]]), torch.zeros(0, 4)]
    sizes = [(64, 64), (40, 48)]  # the second image is padded to 64 x 64
    m = micro_weights(d, boxes, sizes, 8, fg_weight=1.0, bg_weight=0.5, focus_exponent=0.0)
    assert not m.requires_grad
    assert m[0].sum().item() == pytest.approx(1.5)
    assert m[1].sum().item() == pytest.approx(0.5)  # no GT: only the background term
    assert (m[1, 5:, :] == 0).all() and (m[1, :, 6:] == 0).all()  # padding cells
    g = instance_mask(boxes[0], 8, 8, 8)
    bg = (g == 0).float()
    assert torch.allclose(m[0], g / g.sum() + 0.5 * bg / bg.sum())
    for kappa in (1.0, 2.0):
        focus = micro_weights(d, boxes, sizes, 8, focus_exponent=kappa)
        rho = (d[0] / d[0].mean()) ** kappa
        assert torch.allclose(focus[0], m[0] * rho.detach(), rtol=1e-5)
    uniform = micro_weights(d, boxes, sizes, 8, enabled=False)
    assert torch.allclose(uniform[1][:5, :6], torch.full((5, 6), 1 / 30))
    # a cell that overlaps the image is not padding, even when its centre lies outside it
    coarse = micro_weights(torch.rand(1, 1, 1), [torch.zeros(0, 4)], [(40, 48)], 128)
    assert coarse.item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------- macro
def test_adaptive_weights_sum_to_s_and_move_toward_the_lagging_stage():
    hgd = _hgd().train()
    assert hgd.term_names == ["res3", "res4", "p3"]
    losses = torch.tensor([1.0, 1.0, 1.0])
    beta = hgd.macro_weights(losses)
    assert torch.allclose(beta, torch.ones(3))
    previous = beta[1]
    for _ in range(5):  # res4 lags: its running loss grows, and so does its weight
        beta = hgd.macro_weights(torch.tensor([1.0, 4.0, 1.0]))
        assert beta.sum().item() == pytest.approx(3.0)
        assert beta[1] > previous and beta[1] > beta[0] and beta[0] == pytest.approx(beta[2])
        previous = beta[1]
    ema = hgd.loss_ema.clone()
    expected = 1.0
    for _ in range(5):
        expected = 0.9 * expected + 0.1 * 4.0
    assert ema[1].item() == pytest.approx(expected)
    assert torch.allclose(3 * torch.softmax(ema.log(), 0), beta)  # tau = 1
    hgd.eval()
    hgd.macro_weights(torch.tensor([9.0, 9.0, 9.0]))
    assert torch.equal(hgd.loss_ema, ema)  # updated in training only
    sharp = _hgd(macro_temperature=0.5).train()
    beta_sharp = sharp.macro_weights(torch.tensor([1.0, 2.0, 1.0]))
    assert beta_sharp[1].item() == pytest.approx(3 * 4 / 6)  # softmax(2 log L)
    fixed = _hgd(macro="fixed").train()
    assert torch.equal(fixed.macro_weights(torch.tensor([1.0, 5.0, 2.0])), torch.ones(3))
    assert {"loss_ema", "ema_updates"} <= set(hgd.state_dict())


def test_running_losses_are_averaged_over_processes_before_the_update():
    hgd = _hgd().train()
    other_rank = torch.tensor([3.0, 5.0, 1.0])

    def all_reduce(x):
        x += other_rank

    with mock.patch.object(hgd_module.comm, "get_world_size", return_value=2), mock.patch.object(
        hgd_module.dist, "is_initialized", return_value=True
    ), mock.patch.object(hgd_module.dist, "all_reduce", side_effect=all_reduce) as reduce:
        hgd.macro_weights(torch.tensor([1.0, 1.0, 1.0]))
    assert reduce.call_count == 1
    assert torch.allclose(hgd.loss_ema, torch.tensor([2.0, 3.0, 1.0]))


# ----------------------------------------------------------------------------- cross-forward
def _cross_model(tmp_path, identical=False, **hgd):
    cfg = kd_cfg(tmp_path, "FCOS", teacher_fpn=32 if identical else 64, distillers=["HGD"])
    cfg.MODEL.RESNETS.OUT_FEATURES = R4
    cfg.MODEL.KD.TEACHER.OPTS = ["MODEL.RESNETS.OUT_FEATURES", str(R4)]
    if identical:
        cfg.MODEL.RESNETS.NORM = "FrozenBN"
        cfg.MODEL.KD.TEACHER.OPTS += ["MODEL.RESNETS.NORM", "FrozenBN"]
    cfg.MODEL.KD.HGD.CROSS_FORWARD = True
    for key, value in hgd.items():
        cfg.MODEL.KD.HGD[key] = value
    return build_model(cfg)


def test_cross_forward_sends_gradient_to_the_student_only(tmp_path):
    torch.manual_seed(0)
    model = _cross_model(tmp_path, DIRECT=False, MACRO="fixed")
    hgd = model.distillers["HGD"]
    assert hgd.term_names == ["res2>res3", "res3>res4", "res4>res5"]
    assert sorted(hgd.adapters) == ["res2", "res3", "res4"]  # no unused adapter
    model.train()
    with EventStorage():
        loss = model(make_batch(size=64))["loss_kd_hgd"]
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    stage = model.student.backbone.bottom_up.res3
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters())
    assert all(a.weight.grad is not None for a in (m[0] for m in hgd.adapters.values()))
    # the terms run the teacher's stages at distillation time: perturbing the teacher's res4
    # after the capture (the captured target stays) changes the res3>res4 term
    t, s, gt = _captures(model)
    before = hgd(t, s, gt)["loss_kd_hgd"]
    with torch.no_grad():
        for p in model.teacher.backbone.bottom_up.res4.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert not torch.allclose(hgd(t, s, gt)["loss_kd_hgd"], before)


def _captures(model):
    batch = make_batch(size=64)
    gt = [x["instances"] for x in batch]
    with EventStorage():
        _, s = model.student_step(batch, gt)
        with torch.no_grad():
            t = model.teacher_step(batch, s)
    return t, s, gt


def test_cross_forward_vanishes_for_an_identical_teacher(tmp_path):
    torch.manual_seed(0)
    model = _cross_model(tmp_path, identical=True)
    model.teacher.load_state_dict(model.student.state_dict())
    model.train()
    with EventStorage():
        loss = model(make_batch(size=64, boxes_per_image=(3, 1)))["loss_kd_hgd"]
    assert abs(loss.item()) < 1e-5
    assert model.distillers["HGD"].term_names[-3:] == ["res2>res3", "res3>res4", "res4>res5"]


def test_cross_forward_needs_a_teacher_that_exposes_its_stages(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=["HGD"])
    cfg.MODEL.KD.TEACHER.OPTS = ["MODEL.BACKBONE.NAME", "tiny_plain_fpn"]
    cfg.MODEL.KD.HGD.CROSS_FORWARD = True
    with pytest.raises(ValueError, match="HGD.*CROSS_FORWARD.*named_stages"):
        build_model(cfg)
    cfg.MODEL.KD.TEACHER.OPTS = ["MODEL.BACKBONE.NAME", "tiny_stages_fpn"]
    model = build_model(cfg)  # a student ResNet, a teacher of another family with stages
    terms = model.distillers["HGD"].term_names
    assert terms == ["res3", "res4", "res5", "p3", "p4", "p5", "p6", "p7", "res3>c4a", "res4>c5"]
    model.train()
    with EventStorage():
        loss = model(make_batch(size=64))["loss_kd_hgd"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in model.teacher.parameters())


# ---------------------------------------------------------------------------- model and config
def test_r50_teacher_to_r18_student_trains_adapters_and_student(tmp_path):
    cfg = kd_cfg(tmp_path, "GFL", teacher_depth=50, distillers=["HGD"])
    cfg.MODEL.KD.HGD.STAGES = ["res3", "res5", "p4"]
    torch.manual_seed(0)
    model = build_model(cfg)
    hgd = model.distillers["HGD"]
    assert [(p.student, p.teacher_channels) for p in hgd.pairs] == [
        ("res3", 512),
        ("res5", 2048),
        ("p4", 64),
    ]
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch(size=64))
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(hgd.adapters[k][0].weight.grad.abs().sum() > 0 for k in ("res3", "res5"))
    assert model.student.backbone.bottom_up.res3[0].conv1.weight.grad.abs().sum() > 0
    logged = storage.latest()
    assert {"hgd/res3", "hgd/beta/res5", "hgd/p4"} <= set(logged)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MACRO", "sometimes", "MACRO must be one of"),
        ("MACRO_TEMPERATURE", 0.0, "MACRO_TEMPERATURE"),
        ("DIRECT", False, "DIRECT and CROSS_FORWARD are both False"),
        ("FOCUS_EXPONENT", -1.0, "FOCUS_EXPONENT"),
        ("STD_FLOOR", -1.0, "STD_FLOOR"),
        ("NECK", False, None),
    ],
)
def test_config_errors_name_the_key(tmp_path, key, value, message):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=["HGD"])
    cfg.MODEL.KD.HGD[key] = value
    if message is None:  # NECK False alone is fine, and then BACKBONE False is an error
        assert all(p.group == "backbone" for p in build_model(cfg).distillers["HGD"].pairs)
        cfg.MODEL.KD.HGD.BACKBONE = False
        message = "BACKBONE and MODEL.KD.HGD.NECK"
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
