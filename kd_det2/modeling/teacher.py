"""Build a frozen teacher detector from its own config file and weights."""
import logging
import os
from typing import List, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

__all__ = ["build_teacher", "resolve_config_file", "freeze"]

logger = logging.getLogger(__name__)


def resolve_config_file(name: str, base_dir: Optional[str] = None) -> str:
    """Find a teacher config file.

    Tried in order: ``name`` as an absolute path, relative to ``base_dir`` (the directory of the
    config that names it), relative to the current directory, and as a detectron2 ``model_zoo``
    config name (e.g. ``"COCO-Detection/retinanet_R_101_FPN_3x.yaml"``).

    Raises:
        FileNotFoundError: naming every place that was tried.
    """
    if not name:
        raise FileNotFoundError(
            "MODEL.KD.TEACHER.CONFIG_FILE is empty, but distillers need a teacher: set it to a "
            "yacs .yaml, a LazyConfig .py or a detectron2 model_zoo config name."
        )
    candidates = [name] if os.path.isabs(name) else []
    if base_dir and not os.path.isabs(name):
        candidates.append(os.path.join(base_dir, name))
    candidates.append(os.path.abspath(name))
    for path in candidates:
        if os.path.isfile(path):
            return path
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(name)
    except RuntimeError:
        pass
    raise FileNotFoundError(
        f"Teacher config '{name}' not found. Tried {candidates} and the detectron2 model_zoo. "
        "Fix MODEL.KD.TEACHER.CONFIG_FILE (relative paths are resolved against the directory of "
        "the config that sets it)."
    )


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to all its parameters."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _build_from_file(path: str, opts: List[str]) -> Tuple[nn.Module, str]:
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        cfg = LazyConfig.apply_overrides(cfg, list(opts))
        model = instantiate(cfg.model)
        return model, cfg.model.get("input_format", "BGR") or "BGR"
    from ..config import get_kd_cfg

    cfg = get_kd_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch.startswith("KD"):
        raise ValueError(
            f"Teacher config {path} uses the KD wrapper '{arch}'. A teacher must be a plain "
            "detector config (e.g. the config the teacher was trained with)."
        )
    return META_ARCH_REGISTRY.get(arch)(cfg), cfg.INPUT.FORMAT


def build_teacher(
    config_file: str,
    weights: str = "",
    opts: Optional[List[str]] = None,
    require_weights: bool = True,
    base_dir: Optional[str] = None,
) -> Tuple[nn.Module, str]:
    """Build a teacher from its own config, load its weights, and freeze it.

    Args:
        config_file: yacs .yaml, LazyConfig .py or model_zoo name (see
            :func:`resolve_config_file`).
        weights: checkpoint path or URL, loaded with :class:`DetectionCheckpointer`.
        opts: overrides of the teacher config ("KEY", "VALUE", ... for yacs; "a.b=c" for Lazy).
        require_weights: raise when ``weights`` is empty (False: random teacher, smoke tests).
        base_dir: directory against which a relative ``config_file`` is resolved first.

    Returns:
        (teacher in eval mode with requires_grad False everywhere, its input format "BGR"/"RGB")

    Raises:
        FileNotFoundError: missing config or weights file; ValueError: weights that do not fit.
    """
    path = resolve_config_file(config_file, base_dir)
    model, input_format = _build_from_file(path, opts or [])
    if weights:
        is_url = "://" in weights
        if not is_url and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"Teacher weights '{weights}' do not exist. Train the teacher first (e.g. "
                f"tools/train_net.py --config-file {config_file}) and set MODEL.KD.TEACHER.WEIGHTS "
                "to its model_final.pth."
            )
        checkpointer = DetectionCheckpointer(model)
        checkpoint = checkpointer._load_file(checkpointer.path_manager.get_local_path(weights))
        incompatible = checkpointer._load_model(checkpoint)
        missing = list(getattr(incompatible, "missing_keys", []) or [])
        if missing:
            raise ValueError(
                f"Teacher weights '{weights}' do not fit the teacher built from {path}: "
                f"{len(missing)} parameters missing, e.g. {missing[:5]}. Check that "
                "MODEL.KD.TEACHER.CONFIG_FILE is the config the teacher was trained with."
            )
        logger.info(f"Teacher loaded from {weights} (config {path})")
    elif require_weights:
        raise FileNotFoundError(
            "MODEL.KD.TEACHER.WEIGHTS is empty: distilling from a random teacher is almost "
            "certainly a mistake. Set it to the teacher's checkpoint (or set "
            "MODEL.KD.TEACHER.REQUIRE_WEIGHTS False for smoke tests)."
        )
    else:
        logger.warning(f"Teacher from {path} has random weights (REQUIRE_WEIGHTS is False)")
    return freeze(model), input_format
