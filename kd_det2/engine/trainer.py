"""``KDTrainer``: detectron2's ``DefaultTrainer`` for KD wrappers (and plain detectors)."""

import logging
import os
import weakref
from typing import Optional, Tuple
from unittest import mock

import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..data import prepare_dataset
from ..data import prepare_datasets as prepare_dataset_names
from .checkpoint import KDCheckpointer

__all__ = [
    "KDTrainer",
    "check_num_classes",
    "create_ddp_model",
    "has_compiled_ops",
    "num_classes_setting",
    "prepare_datasets",
    "without_teacher",
]

logger = logging.getLogger(__name__)


def has_compiled_ops() -> bool:
    """Whether detectron2's compiled extension (``detectron2._C``) can be imported."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def create_ddp_model(model, *, fp16_compression: bool = False, **kwargs):
    """detectron2's ``create_ddp_model`` that also works on CPU (GLOO): no ``device_ids`` there.

    Returns ``model`` unchanged in a single process.
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_gpu = next(model.parameters()).is_cuda
        kwargs["device_ids"] = [comm.get_local_rank()] if on_gpu else None
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def prepare_datasets(cfg) -> None:
    """Make the datasets of ``cfg.DATASETS`` usable before training: register ``voc:``/``coco:``
    names in every process; generate embedded datasets and check path datasets on the main
    process, once (see :func:`kd_det2.data.prepare_datasets`); then :func:`check_num_classes`."""
    prepare_dataset_names(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_num_classes(cfg)


#: student meta-architecture -> config node of its NUM_CLASSES
_NUM_CLASSES_NODE = {
    "FCOS": "FCOS",
    "GFL": "GFL",
    "RetinaNet": "RETINANET",
    "GeneralizedRCNN": "ROI_HEADS",
}


def num_classes_setting(cfg) -> Optional[Tuple[str, int]]:
    """(key, value) of the config key that sets the (student) detector's class count, e.g.
    ``("MODEL.FCOS.NUM_CLASSES", 80)``; None for meta-architectures this table does not know."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch.startswith("KD"):
        arch = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    node = _NUM_CLASSES_NODE.get(arch)
    if node is None:
        return None
    return f"MODEL.{node}.NUM_CLASSES", int(cfg.MODEL[node].NUM_CLASSES)


def check_num_classes(cfg) -> None:
    """Raise a ValueError when a training set has more classes than the detector predicts.

    Compares ``len(thing_classes)`` of each ``DATASETS.TRAIN`` entry (when its metadata has
    them) with the detector's NUM_CLASSES, so that the error comes before training instead of
    an index error in the first loss; fewer dataset classes than NUM_CLASSES only warns.
    """
    from detectron2.data import MetadataCatalog

    setting = num_classes_setting(cfg)
    if setting is None:
        return
    key, num_classes = setting
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None or len(classes) == num_classes:
            continue
        msg = (
            f"dataset '{name}' has {len(classes)} classes {list(classes)[:10]} but "
            f"{key} is {num_classes}"
        )
        if len(classes) > num_classes:
            raise ValueError(f"{msg}: set {key} {len(classes)}")
        logger.warning(f"{msg}: {num_classes - len(classes)} classes of the model are unused")


class KDTrainer(DefaultTrainer):
    """``DefaultTrainer`` with what KD wrappers need; only classmethods and hooks are changed.

    * DDP through :func:`create_ddp_model` (works with GLOO on CPU; honours
      ``MODEL.KD.DDP_FIND_UNUSED_PARAMETERS``).
    * :class:`KDCheckpointer`: atomic checkpoints without the teacher; ``MODEL.WEIGHTS`` loads
      into the student; ``--resume`` restores student, adapters, optimizer and iteration.
    * COCOEvaluator for every test set (pure-Python COCO evaluation when ``detectron2._C`` is
      not importable).
    * Datasets are prepared before the data loaders are built (:func:`prepare_datasets`):
      ``voc:<dir>:<split>`` and ``coco:<file.json>[:<image folder>]`` names are registered and
      checked, embedded datasets generated, the class count checked against NUM_CLASSES.
    """

    def __init__(self, cfg):
        prepare_datasets(cfg)
        find_unused = bool(cfg.MODEL.KD.get("DDP_FIND_UNUSED_PARAMETERS", False))

        def ddp(model, **kwargs):
            return create_ddp_model(model, find_unused_parameters=find_unused, **kwargs)

        with mock.patch.object(d2_defaults, "create_ddp_model", ddp):
            super().__init__(cfg)

    def build_hooks(self):
        # Called at the end of DefaultTrainer.__init__, before the hooks capture the checkpointer.
        self.checkpointer = KDCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        """COCOEvaluator; datasets without a COCO json (VOC folders) are converted by
        detectron2 into ``output_folder``, afresh for ``voc:`` names (their files may have been
        corrected since the last run)."""
        prepare_dataset(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            use_fast_impl=has_compiled_ops(),
            allow_cached_coco=not dataset_name.startswith("voc:"),
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """detectron2's test loader with ``TEST.IMS_PER_BATCH`` images per batch."""
        prepare_dataset(dataset_name)
        return build_detection_test_loader(
            cfg, dataset_name, batch_size=cfg.TEST.get("IMS_PER_BATCH", 1)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, or AdamW when ``SOLVER.OPTIMIZER`` is "AdamW" (same param groups,
        gradient clipping and LR schedule)."""
        name = cfg.SOLVER.get("OPTIMIZER", "SGD").upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER '{name}' is not one of 'SGD', 'AdamW'")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        adamw = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return adamw(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        logger.info(f"Trainable parameters: {trainable:,}; frozen (teacher etc.): {frozen:,}")
        return model


def without_teacher(cfg):
    """A copy of ``cfg`` that builds the KD wrapper with no teacher and no distillers.

    For evaluation and export: the teacher's config and weights are not needed there.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.KD.DISTILLERS = []
    cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = False
    return cfg


def run_cli(main) -> None:
    """Parse detectron2's command line and run ``main(args)`` through ``launch`` (one process per
    GPU, or ``--num-gpus`` CPU processes with GLOO when there is no GPU)."""
    from detectron2.engine import default_argument_parser, launch

    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
