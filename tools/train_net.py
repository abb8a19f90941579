#!/usr/bin/env python
"""Train or evaluate a (distilled) detector from a yacs config.

    python tools/train_net.py --config-file projects/PGD/fcos_r50.yaml --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume     # continue an interrupted run

Datasets may be given by path (see docs/DATA.md), e.g.
    DATASETS.TRAIN "('voc:datasets/VOC2007:trainval',)" DATASETS.TEST "('coco:val.json:val',)"

Accepts detectron2's usual flags (--num-gpus, --num-machines, --machine-rank, --dist-url,
--resume, --eval-only) and trailing "KEY VALUE" overrides. Works for plain detectors too.
Without a GPU, --num-gpus N starts N CPU processes (GLOO).
"""
import logging

from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import kd_det2  # noqa: F401  (registers meta-architectures, distillers, datasets)
from kd_det2.config import get_kd_cfg
from kd_det2.engine import KDCheckpointer, KDTrainer, run_cli, without_teacher

logger = logging.getLogger("kd_det2")


def setup(args):
    """Config from file + command-line overrides, then detectron2's default setup."""
    cfg = get_kd_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="kd_det2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        cfg = without_teacher(cfg)
        model = KDTrainer.build_model(cfg)
        KDCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = KDTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = KDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    run_cli(main)
