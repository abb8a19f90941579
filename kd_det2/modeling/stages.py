"""The bottom-up stages of a detector's backbone, one at a time (the stage protocol).

Some distillers run one stage of a model on other features, e.g. HGD's cross-forward reading,
which feeds an adapted student stage through the frozen teacher's next stage. A bottom-up backbone
exposes its stages when it has either

* a method ``named_stages()`` returning the ordered ``(name, module)`` pairs, or
* detectron2 ResNet's attributes ``stage_names`` (the names, in order) and ``stages`` (the
  modules, in the same order).

The module of stage i maps the output of stage i - 1 (of the stem, for the first stage) to the
output the backbone returns under ``name_i`` when that name is in its out_features, e.g. ResNet's
``res4`` block sequence maps ``res3`` (N, C3, H/8, W/8) to ``res4`` (N, C4, H/16, W/16).
"""

from typing import List, Optional, Tuple

from torch import nn

__all__ = ["bottom_up", "named_stages", "stage_order"]


def bottom_up(model: nn.Module) -> nn.Module:
    """The bottom-up network of a detector: ``model.backbone.bottom_up`` for an FPN backbone,
    ``model.backbone`` itself otherwise."""
    backbone = model.backbone
    return getattr(backbone, "bottom_up", backbone)


def named_stages(backbone: nn.Module) -> Optional[List[Tuple[str, nn.Module]]]:
    """The ordered ``(name, module)`` stages a bottom-up backbone exposes, or None when it does
    not follow the stage protocol (see the module docstring)."""
    method = getattr(backbone, "named_stages", None)
    if callable(method):
        return [(str(n), m) for n, m in method()]
    names, stages = getattr(backbone, "stage_names", None), getattr(backbone, "stages", None)
    if names is None or stages is None or len(names) != len(stages):
        return None
    if not all(isinstance(m, nn.Module) for m in stages):
        return None
    return [(str(n), m) for n, m in zip(names, stages)]


def stage_order(model: nn.Module) -> Tuple[str, ...]:
    """Names of the stages of a detector's bottom-up backbone, in order; empty when the backbone
    does not expose them."""
    stages = named_stages(bottom_up(model))
    return tuple(n for n, _ in stages) if stages is not None else ()
