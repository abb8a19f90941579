#!/usr/bin/env python
"""Train or evaluate a (distilled) detector from a LazyConfig (.py) file.

    python tools/lazyconfig_train_net.py --config-file projects/demo/configs/fcos_fitnet.py
    python tools/lazyconfig_train_net.py --config-file CFG --num-gpus 8 train.max_iter=1000
    python tools/lazyconfig_train_net.py --config-file CFG --eval-only train.init_checkpoint=W.pth
    python tools/lazyconfig_train_net.py --config-file CFG --resume   # continue an interrupted run

The config defines ``model``, ``dataloader`` (``train``, ``test``, ``evaluator``), ``optimizer``,
``lr_multiplier`` and ``train`` (keys of detectron2's ``configs/common/train.py``); trailing
``a.b=c`` arguments override it. Dataset names may be paths (docs/DATA.md), e.g.
``dataloader.train.dataset.names=voc:datasets/VOC2007:trainval`` (quote the value, as in
``'...names="voc:~/VOC:train"'``, when it holds characters such as ``~`` or spaces). Works for
KD wrappers and plain detectors alike. Accepts detectron2's usual flags; without a GPU,
--num-gpus N starts N CPU processes (GLOO).

``--eval-only`` evaluates ``train.init_checkpoint`` (or, with --resume, the last checkpoint of
``train.output_dir``). A KD wrapper is then built without its teacher: ``model.teacher`` is set to
None and ``model.distillers`` to {} before instantiation, so neither the teacher config nor its
weights are needed (only the student runs at inference anyway).
"""
import copy
import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

import kd_det2  # noqa: F401  (registers meta-architectures, distillers, datasets)
from kd_det2.data import prepare_datasets
from kd_det2.engine import KDCheckpointer, create_ddp_model, has_compiled_ops, run_cli

logger = logging.getLogger("kd_det2")


def dataset_names(cfg, key: str) -> list:
    """Dataset names at the dotted ``key`` of ``cfg`` (a str or a list there) as a list."""
    names = OmegaConf.select(cfg, key, default=None)
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _is_coco_evaluator(node) -> bool:
    target = node.get("_target_") if node is not None else None
    if isinstance(target, str):
        return target.rsplit(".", 1)[-1] == "COCOEvaluator"
    return isinstance(target, type) and issubclass(target, COCOEvaluator)


def setup(args):
    """Config from file + overrides, kd_det2's adjustments, then detectron2's default setup."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    evaluator = cfg.dataloader.get("evaluator")
    if _is_coco_evaluator(evaluator) and not has_compiled_ops():
        evaluator.use_fast_impl = False  # pure-Python COCO evaluation without detectron2._C
    test_names = dataset_names(cfg, "dataloader.test.dataset.names")
    if _is_coco_evaluator(evaluator) and any(n.startswith("voc:") for n in test_names):
        evaluator.allow_cached_coco = False  # VOC files may have been corrected since last run
    if args.eval_only and "teacher" in cfg.model and "distillers" in cfg.model:
        cfg.model.teacher = None
        cfg.model.distillers = {}
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="kd_det2")
    return cfg


def prepare_data(cfg, train: bool = True) -> None:
    """Prepare the datasets named by ``cfg.dataloader`` (see :func:`kd_det2.data.prepare_datasets`):
    ``voc:``/``coco:`` names registered in every process, checked on the main process, embedded
    datasets generated there."""
    names = dataset_names(cfg, "dataloader.test.dataset.names")
    if train:
        names = dataset_names(cfg, "dataloader.train.dataset.names") + names
    prepare_datasets(names)


def do_test(cfg, model):
    """Evaluate ``model`` on each dataset of ``cfg.dataloader.test`` with its evaluator.

    Returns:
        the evaluator's results; a dict {dataset name: results} when there are several datasets.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    results = {}
    for name in dataset_names(cfg, "dataloader.test.dataset.names"):
        data = copy.deepcopy(cfg.dataloader)
        data.test.dataset.names = name
        if "dataset_name" in data.evaluator:
            data.evaluator.dataset_name = name
        results[name] = inference_on_dataset(
            model, instantiate(data.test), instantiate(data.evaluator)
        )
        if comm.is_main_process():
            logger.info(f"Evaluation results for {name} in csv format:")
            print_csv_format(results[name])
    return next(iter(results.values())) if len(results) == 1 else results


def do_train(args, cfg) -> None:
    """Train ``cfg.model`` with detectron2's trainers and hooks, resuming with --resume."""
    model = instantiate(cfg.model).to(cfg.train.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    logger.info(f"Trainable parameters: {trainable:,}; frozen (teacher etc.): {frozen:,}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    checkpointer = KDCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    checkpoint_hook = writer_hook = None
    if comm.is_main_process():  # only the main process writes checkpoints and metrics
        checkpoint_hook = hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        writers = default_writers(cfg.train.output_dir, cfg.train.max_iter)
        writer_hook = hooks.PeriodicWriter(writers, period=cfg.train.log_period)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            checkpoint_hook,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            writer_hook,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    """One process: evaluate (--eval-only) or train, as ``args`` and the config say."""
    cfg = setup(args)
    prepare_data(cfg, train=not args.eval_only)
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        KDCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    run_cli(main)
