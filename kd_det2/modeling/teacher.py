"""Build a frozen teacher detector from its own config file and weights."""

import logging
import os
from typing import List, Optional, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

__all__ = [
    "build_kd_model",
    "build_teacher",
    "build_teacher_model",
    "freeze",
    "resolve_config_file",
]

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
            "MODEL.KD.TEACHER.CONFIG_FILE is empty, but distillers (and "
            "MODEL.KD.INIT_STUDENT_FROM_TEACHER) need a teacher: set it to a yacs .yaml, a "
            "LazyConfig .py or a detectron2 model_zoo config name."
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


class _RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the incompatible keys of its last load."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
        super()._log_incompatible_keys(incompatible)


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
        checkpointer = _RecordingCheckpointer(model)
        checkpointer.load(weights)
        missing = list(getattr(checkpointer.incompatible, "missing_keys", None) or [])
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


def build_teacher_model(
    config_file: str,
    weights: str = "",
    opts: Optional[List[str]] = None,
    require_weights: bool = True,
    base_dir: Optional[str] = None,
) -> nn.Module:
    """:func:`build_teacher` for LazyConfigs: returns the frozen teacher only.

    Use it as the ``teacher`` of a KD wrapper::

        model = L(KDDenseDetector)(
            student=...,
            teacher=L(build_teacher_model)(
                config_file="projects/teachers/FCOS_R_101_FPN_3x.yaml",
                weights="output/teachers/FCOS_R_101_FPN_3x/model_final.pth",
            ),
            distillers=L(OrderedDict)(FitNet=L(FitNet)(...), LogitKD=L(LogitKD)(...)),
        )

    (``distillers`` is a LazyCall, not a plain dict: ``instantiate`` only builds the objects
    inside mappings that have a ``_target_``.)

    Args:
        config_file, weights, opts, require_weights: as in :func:`build_teacher`.
        base_dir: directory against which a relative ``config_file`` is resolved first; by
            default the root of the kd_det2 source tree, as for ``MODEL.KD.TEACHER.CONFIG_FILE``
            (then the current directory and the model zoo are tried).

    Returns:
        the teacher, in eval mode with ``requires_grad`` False everywhere. Its input format is
        not returned: set ``teacher_input_format`` of the wrapper when the teacher is not "BGR".
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    model, _ = build_teacher(config_file, weights, opts, require_weights, base_dir)
    return model


def build_kd_model(
    *,
    meta_arch: str,
    init_student_from_teacher: bool = False,
    init_student_skip: Sequence[str] = ("backbone.bottom_up.",),
    **kwargs,
) -> nn.Module:
    """Build a KD wrapper in a LazyConfig, optionally initialising the student from the teacher.

    The LazyConfig form of ``MODEL.KD.INIT_STUDENT_FROM_TEACHER``/``INIT_STUDENT_SKIP``: the
    wrapper's own arguments stay where they are (``model.student``, ``model.teacher``,
    ``model.distillers``, ...), so overrides and ``--eval-only`` work as for a plain wrapper::

        model = L(build_kd_model)(
            meta_arch="KDDenseDetector",
            init_student_from_teacher=True,
            student=..., teacher=L(build_teacher_model)(...), distillers=L(OrderedDict)(...),
        )

    Args:
        meta_arch: name of the KD wrapper in ``META_ARCH_REGISTRY`` ("KDDenseDetector",
            "KDGeneralizedRCNN").
        init_student_from_teacher: copy the teacher's tensors into the student where names and
            shapes match (see :func:`kd_det2.modeling.meta_arch.base.init_student_from_teacher`).
            Skipped when the wrapper has no teacher (e.g. evaluation, where the trained weights
            are loaded afterwards anyway). Without distillers, the teacher is dropped after the
            copy (the wrapper gets ``teacher=None``), as ``MODEL.KD.INIT_STUDENT_FROM_TEACHER``
            does for a plain student.
        init_student_skip: name prefixes left alone (default: the bottom-up backbone, i.e. the
            neck and the head are initialised from the teacher).
        kwargs: arguments of the wrapper (``student``, ``teacher``, ``distillers``, ...).

    Returns:
        the KD wrapper.
    """
    from .meta_arch.base import KDMetaArchBase
    from .meta_arch.base import init_student_from_teacher as init_student

    cls = META_ARCH_REGISTRY.get(meta_arch)
    if not (isinstance(cls, type) and issubclass(cls, KDMetaArchBase)):
        raise ValueError(f"build_kd_model needs a KD wrapper, got meta_arch='{meta_arch}'")
    teacher = kwargs.get("teacher")
    if init_student_from_teacher and teacher is not None:
        init_student(kwargs["student"], teacher, init_student_skip)
        if not kwargs.get("distillers"):
            # Plain training from the teacher's initialisation, as in yacs: the teacher is not
            # needed after the copy.
            kwargs["teacher"] = None
    return cls(**kwargs)
