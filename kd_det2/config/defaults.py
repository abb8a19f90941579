"""Config keys that kd_det2 adds to a detectron2 yacs config.

Every key of ``MODEL.KD``, ``MODEL.FCOS`` and ``MODEL.GFL`` is documented here, next to its default.
Method-specific distillers add their own sub-node under ``MODEL.KD`` in their own file through
:func:`register_kd_config_hook`, so that this file stays the single entry point.
"""

from typing import Callable, List

from detectron2.config import CfgNode as CN

_CONFIG_HOOKS: List[Callable[[CN], None]] = []


def register_kd_config_hook(fn: Callable[[CN], None]) -> Callable[[CN], None]:
    """Register ``fn(cfg)`` to be called by :func:`add_kd_config` (used by distiller files)."""
    _CONFIG_HOOKS.append(fn)
    return fn


def add_fcos_config(cfg: CN) -> None:
    """Add ``MODEL.FCOS`` (detectron2's FCOS has no yacs keys of its own)."""
    if "FCOS" in cfg.MODEL:
        return
    cfg.MODEL.FCOS = CN()
    # Number of foreground classes.
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone features used by the head, from high to low resolution.
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 convs in each of the classification and regression towers.
    cfg.MODEL.FCOS.NUM_CONVS = 4
    # Normalisation of the tower convs: "GN" (paper), "BN", "SyncBN" (per-level BN) or "".
    cfg.MODEL.FCOS.NORM = "GN"
    # Prior probability of a positive at initialisation (bias of the classification conv).
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01
    # Points within this many strides of a GT centre may be positives ("center sampling").
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Focal loss parameters of the classification branch.
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Inference: minimum sqrt(cls * centerness) score, candidates per level, NMS IoU threshold.
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6


def add_gfl_config(cfg: CN) -> None:
    """Add ``MODEL.GFL`` (the GFL detector of :mod:`kd_det2.modeling.detectors.gfl`)."""
    if "GFL" in cfg.MODEL:
        return
    cfg.MODEL.GFL = CN()
    # Number of foreground classes.
    cfg.MODEL.GFL.NUM_CLASSES = 80
    # Backbone features used by the head, from high to low resolution.
    cfg.MODEL.GFL.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 convs in each of the classification and regression towers.
    cfg.MODEL.GFL.NUM_CONVS = 4
    # Normalisation of the tower convs: "GN" (paper), "BN", "SyncBN" (per-level BN) or "".
    cfg.MODEL.GFL.NORM = "GN"
    # Prior probability of a positive at initialisation (bias of the classification conv).
    cfg.MODEL.GFL.PRIOR_PROB = 0.01
    # n: each box edge is a distribution over the bins 0..n (in strides).
    cfg.MODEL.GFL.REG_MAX = 16
    # One square anchor per location of side ANCHOR_SCALE x stride (octave base scale), used by
    # the ATSS assigner; its centre is the regression origin.
    cfg.MODEL.GFL.ANCHOR_SCALE = 8.0
    # Anchor centre offset within a cell, in strides (0.0: cell corner, as mmdetection v2).
    cfg.MODEL.GFL.ANCHOR_OFFSET = 0.0
    # ATSS: candidates per level and GT.
    cfg.MODEL.GFL.ATSS_TOPK = 9
    # Quality Focal Loss exponent beta.
    cfg.MODEL.GFL.QFL_BETA = 2.0
    # Loss weights of "loss_qfl", "loss_dfl", "loss_giou".
    cfg.MODEL.GFL.LOSS_WEIGHT_QFL = 1.0
    cfg.MODEL.GFL.LOSS_WEIGHT_DFL = 0.25
    cfg.MODEL.GFL.LOSS_WEIGHT_GIOU = 2.0
    # Inference: minimum score, candidates per level, NMS IoU threshold.
    cfg.MODEL.GFL.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.GFL.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.GFL.NMS_THRESH_TEST = 0.6


def add_kd_config(cfg: CN) -> None:
    """Add ``MODEL.KD.*`` (and ``MODEL.FCOS.*``, ``MODEL.GFL.*``) defaults to ``cfg`` in place.

    Idempotent: calling it twice leaves the config unchanged.
    """
    add_fcos_config(cfg)
    add_gfl_config(cfg)
    if "KD" in cfg.MODEL:
        return
    _C = cfg
    _C.MODEL.KD = CN()
    # Meta-architecture of the student inside a KD wrapper (MODEL.META_ARCHITECTURE names the
    # wrapper: "KDDenseDetector" or "KDGeneralizedRCNN"). All other MODEL.* keys describe the
    # student, exactly as in a plain detectron2 config.
    _C.MODEL.KD.STUDENT_META_ARCHITECTURE = "RetinaNet"
    # Names from KD_DISTILLER_REGISTRY, applied together. Empty: plain training of the student
    # through the same wrapper (no teacher forward).
    _C.MODEL.KD.DISTILLERS = []
    # KD losses are multiplied by min(1, (iter + 1) / WARMUP_ITERS); 0 disables the warm-up.
    _C.MODEL.KD.WARMUP_ITERS = 0
    # Copy every teacher parameter/buffer whose name and shape match into the student, except
    # those under the prefixes of INIT_STUDENT_SKIP (the backbone's bottom-up network by default:
    # i.e. the neck and the head are initialised from the teacher, as the PGD and GKD papers do).
    # Without distillers the teacher is built for this copy only and then dropped (plain training
    # with the same initialisation as an inherited distillation).
    _C.MODEL.KD.INIT_STUDENT_FROM_TEACHER = False
    _C.MODEL.KD.INIT_STUDENT_SKIP = ["backbone.bottom_up."]
    # Pass find_unused_parameters=True to DistributedDataParallel.
    _C.MODEL.KD.DDP_FIND_UNUSED_PARAMETERS = False
    # Every this many iterations (0: never), log to the event storage the gradient norms of the
    # detection and of the KD losses over the student parameters both reach, and their ratios
    # (kd_grad/*). Costs a few extra backward passes in those iterations; single-process only.
    _C.MODEL.KD.GRAD_STATS_PERIOD = 0

    _C.MODEL.KD.TEACHER = CN()
    # Teacher config: a yacs .yaml, a LazyConfig .py, or a detectron2 model_zoo config name such
    # as "COCO-Detection/retinanet_R_101_FPN_3x.yaml". Relative paths are resolved against the
    # directory of the config file that sets them, then the current directory.
    _C.MODEL.KD.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint (.pth/.pkl path or detectron2:// URL) loaded with DetectionCheckpointer.
    _C.MODEL.KD.TEACHER.WEIGHTS = ""
    # "KEY VALUE" overrides applied to the teacher config (yacs list or Lazy dotted keys).
    _C.MODEL.KD.TEACHER.OPTS = []
    # Refuse to start without teacher weights. Set False only for smoke tests / model building.
    _C.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = True

    # FitNet-style feature imitation on neck (FPN) levels, 1x1 adapter when widths differ.
    _C.MODEL.KD.FITNET = CN()
    # Loss weight of "loss_kd_fitnet".
    _C.MODEL.KD.FITNET.LOSS_WEIGHT = 1.0
    # Neck levels to imitate; empty = the levels the student's head (or RPN) consumes.
    _C.MODEL.KD.FITNET.IN_FEATURES = []
    # Always use a 1x1 adapter, even when widths match (otherwise only when they differ).
    _C.MODEL.KD.FITNET.ALWAYS_ADAPT = False

    # Soft-label logit KD with temperature: sigmoid (binary KL) for dense heads, softmax KL over
    # the student's sampled proposals for RoI heads. Losses are scaled by T^2.
    _C.MODEL.KD.LOGIT = CN()
    # Loss weight of "loss_kd_logit".
    _C.MODEL.KD.LOGIT.LOSS_WEIGHT = 1.0
    # Softening temperature T.
    _C.MODEL.KD.LOGIT.TEMPERATURE = 2.0

    # Optimizer built by KDTrainer: "SGD" (detectron2's default, SOLVER.MOMENTUM/NESTEROV) or
    # "AdamW" (SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY; converges faster in short from-scratch runs).
    if "OPTIMIZER" not in _C.SOLVER:
        _C.SOLVER.OPTIMIZER = "SGD"

    # Images per batch of the test loader built by KDTrainer (per process); batching makes CPU
    # inference several times faster than detectron2's fixed 1.
    if "IMS_PER_BATCH" not in _C.TEST:
        _C.TEST.IMS_PER_BATCH = 1

    for hook in _CONFIG_HOOKS:
        hook(cfg)


def get_kd_cfg() -> CN:
    """A detectron2 default config with the kd_det2 keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_kd_config(cfg)
    return cfg
