"""What the lightweight backbones share: stage naming, norm conversion, freezing, FPN builders.

A lightweight backbone is a chain of layers cut from an ImageNet classifier. Layers are grouped by
output stride into the stem (stride 2) and "stage2".."stage5" (strides 4..32), the names
every lightweight backbone uses, as ResNet's "res2".."res5". ``MODEL.BACKBONE.FREEZE_AT`` counts
them as detectron2's ResNet does: 1 = the stem, 2 = the stem and stage2, ..., 5 = everything.
"""

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import Tensor, nn

__all__ = [
    "BACKBONE_CONFIG_NODES",
    "NORMS",
    "STAGES",
    "StagedBackbone",
    "backbone_config_node",
    "build_lightweight_fpn",
    "check_input_shape",
    "convert_norm",
    "register_backbone",
]

#: stage names by output stride 2, 4, 8, 16, 32 (index + 1 = FREEZE_AT that freezes it)
STAGES = ("stem", "stage2", "stage3", "stage4", "stage5")
#: accepted values of the NORM key of a lightweight backbone
NORMS = ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "GN")
#: registered builder name -> its config node under MODEL (e.g. "MOBILENET_V2")
BACKBONE_CONFIG_NODES: Dict[str, str] = {}


def register_backbone(node: str) -> Callable:
    """Register a builder in BACKBONE_REGISTRY and remember that it reads ``MODEL.<node>``."""

    def deco(fn: Callable) -> Callable:
        BACKBONE_REGISTRY.register(fn)
        BACKBONE_CONFIG_NODES[fn.__name__] = node
        return fn

    return deco


def backbone_config_node(name: str) -> Optional[str]:
    """The ``MODEL`` node read by the kd_det2 backbone builder ``name``; None for others."""
    return BACKBONE_CONFIG_NODES.get(name)


def _converted(bn: nn.BatchNorm2d, norm: str) -> nn.Module:
    c = bn.num_features
    if norm == "GN":
        new = nn.GroupNorm(math.gcd(32, c), c)
        new.load_state_dict({"weight": bn.weight, "bias": bn.bias})
        return new
    new = get_norm(norm, c)
    new.load_state_dict(bn.state_dict())
    new.eps, new.momentum = bn.eps, bn.momentum
    return new


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by the ``norm`` layer.

    BN-family norms keep the statistics, affine parameters, eps and momentum; "FrozenBN" is
    detectron2's :class:`FrozenBatchNorm2d` (buffers only); "GN" is a GroupNorm with gcd(32, C)
    groups (32 when C allows it) that keeps the affine parameters and drops the statistics.

    Returns:
        ``module`` (converted in place; ``module`` itself must not be a BatchNorm).
    """
    if norm not in NORMS:
        raise ValueError(f"NORM '{norm}' is not supported by the lightweight backbones: {NORMS}")
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "BN":
        return module
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            module._modules[name] = _converted(child, norm)
        else:
            convert_norm(child, norm)
    return module


def _freeze(parent: nn.Module, name: str) -> None:
    """Stop gradients to ``parent.<name>`` and make its BatchNorms FrozenBN (as ResNet does)."""
    child = FrozenBatchNorm2d.convert_frozen_batchnorm(parent._modules[name])
    for p in child.parameters():
        p.requires_grad_(False)
    parent._modules[name] = child


def _conv_stride(layer: nn.Module) -> int:
    return max((m.stride[0] for m in layer.modules() if isinstance(m, nn.Conv2d)), default=1)


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class StagedBackbone(Backbone):
    """A chain of layers (``self.<chain_name>``, after an optional stem prologue) whose outputs
    at the end of each stage are the backbone's outputs.

    Subclasses build their modules, then call :meth:`_setup_stages`; they may override
    :meth:`_prologue` (layers before the chain, at stride 2) and :meth:`_run_layer`.
    """

    #: attribute holding the chain (an ``nn.Sequential`` or ``nn.ModuleList``)
    chain_name: str = ""
    #: names of the attributes that form the prologue (frozen with the stem)
    prologue_names: Sequence[str] = ()

    def _setup_stages(
        self,
        input_stride: int,
        out_features: Sequence[str],
        norm: str,
        freeze_at: int,
    ) -> None:
        """Name the stages, cut the chain after the last one needed, convert norms and freeze.

        Args:
            input_stride: stride of the chain's input (2 after a stride-2 prologue, else 1).
            out_features: stages to return, a subset of "stage2".."stage5".
            norm: one of :data:`NORMS`.
            freeze_at: number of stages (stem first) to freeze, 0..5.
        """
        bad = [f for f in out_features if f not in STAGES[1:]]
        if bad or not out_features:
            raise ValueError(
                f"OUT_FEATURES {list(out_features)}: expected a non-empty subset of {STAGES[1:]}"
            )
        if not 0 <= freeze_at <= len(STAGES):
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be in 0..5, got {freeze_at}")
        chain = getattr(self, self.chain_name)
        stride, stages = input_stride, []
        for layer in chain:
            stride *= _conv_stride(layer)
            stages.append(STAGES[int(math.log2(stride)) - 1])
        ends = {s: i for i, s in enumerate(stages)}  # stage -> index of its last layer
        keep = max(ends[f] for f in out_features) + 1
        del chain[keep:]
        self._layer_stages = stages[:keep]
        self._taps = {ends[f]: f for f in out_features}
        self._out_features = [f for f in STAGES if f in out_features]
        self._out_feature_channels = {f: _out_channels(chain[ends[f]]) for f in out_features}
        self._out_feature_strides = {f: 2 ** (STAGES.index(f) + 1) for f in out_features}
        convert_norm(self, norm)
        frozen = STAGES[:freeze_at]
        if "stem" in frozen:
            for name in self.prologue_names:
                _freeze(self, name)
        for i, stage in enumerate(self._layer_stages):
            if stage in frozen:
                _freeze(chain, str(i))

    def _prologue(self, x: Tensor) -> Tensor:
        return x

    def _run_layer(self, index: int, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalised RGB images.

        Returns:
            stage name -> (N, C_s, ceil(H / s), ceil(W / s)) for each of ``out_features``, where s
            is the stage's stride (4, 8, 16, 32) and C_s its channels (:meth:`output_shape`).
        """
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes (N, C, H, W) input, got {x.shape}")
        x = self._prologue(x)
        outputs = {}
        for i, layer in enumerate(getattr(self, self.chain_name)):
            x = self._run_layer(i, layer, x)
            if i in self._taps:
                outputs[self._taps[i]] = x
        return outputs

    def named_stages(self) -> List[Tuple[str, nn.Module]]:
        """The stages after the stem, in order, as ``(name, module)`` pairs (the stage protocol
        of :mod:`kd_det2.modeling.stages`, e.g. for HGD's cross-forward): the module of
        "stage<k>" maps the output of the previous stage (N, C, H, W) to this stage's output, as
        :meth:`forward` computes it. Only stages kept by ``out_features`` are listed."""
        chain = getattr(self, self.chain_name)
        order = [s for s in STAGES[1:] if s in self._layer_stages]
        return [
            (s, _StageRun(self, [i for i, t in enumerate(self._layer_stages) if t == s], chain))
            for s in order
        ]

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }


class _StageRun(nn.Module):
    """The layers of one stage of a :class:`StagedBackbone`, run as its ``forward`` runs them.
    The layers are shared with the backbone (the owner is not registered as a submodule)."""

    def __init__(self, owner: StagedBackbone, indices: List[int], chain: nn.Module):
        super().__init__()
        self.indices = list(indices)
        self.layers = nn.ModuleList(chain[i] for i in self.indices)
        self._owner = (owner,)  # a tuple: not registered, no parameter counted twice

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in zip(self.indices, self.layers):
            x = self._owner[0]._run_layer(index, layer, x)
        return x


def build_lightweight_fpn(cfg, bottom_up: Backbone, top_block: str, node: str) -> FPN:
    """detectron2's FPN on a lightweight bottom-up network.

    Args:
        cfg: config with ``MODEL.FPN.*``; ``MODEL.FPN.IN_FEATURES`` must end with "stage5".
        bottom_up: the stage network.
        top_block: "maxpool" (P6 = max-pooled P5: P2-P6 for Faster R-CNN), "p6p7_c5" (P6/P7
            from the bottom-up "stage5": RetinaNet as detectron2) or "p6p7_p5" (P6/P7 from P5:
            FCOS, GFL, RetinaNet).
        node: name of the backbone's config node, for error messages.
    """
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    shapes = bottom_up.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if not in_features or missing or in_features[-1] != "stage5":
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} must be consecutive stages ending with 'stage5' "
            f"and outputs of the backbone (MODEL.{node}.OUT_FEATURES: {sorted(shapes)}), e.g. "
            "['stage3', 'stage4', 'stage5'] for P3-P7 or ['stage2', ..., 'stage5'] for P2-P6."
        )
    out = cfg.MODEL.FPN.OUT_CHANNELS
    if top_block == "maxpool":
        top = LastLevelMaxPool()
    elif top_block == "p6p7_c5":
        top = LastLevelP6P7(shapes["stage5"].channels, out, in_feature="stage5")
    elif top_block == "p6p7_p5":
        top = LastLevelP6P7(out, out, in_feature="p5")
    else:
        raise ValueError(f"Unknown FPN top block '{top_block}'")
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def check_input_shape(input_shape: ShapeSpec, name: str) -> None:
    """The lightweight backbones take 3-channel (RGB) images."""
    if input_shape.channels != 3:
        raise ValueError(
            f"{name} takes 3-channel RGB images; MODEL.PIXEL_MEAN has {input_shape.channels} values"
        )
