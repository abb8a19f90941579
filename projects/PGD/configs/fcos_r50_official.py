"""LazyConfig twin of projects/PGD/fcos_r50_official.yaml.

PGD on COCO set up like the official code's FCOS run, for reproducing its published numbers:
both parity flags (cross-image mask mixing, (y, x) points), padding counted as background,
4 images per GPU on 8 GPUs (batch 32), lr 0.02, single-scale 1333 x 800 training with flips,
12 epochs (43,975 iterations, steps at epochs 8 and 11), 500 warm-up iterations from 0.001;
neck and head initialised from the teacher. Unlike the yaml, no gradient clipping (detectron2's
LazyConfig trainer has no clipping option); see the yaml for what is left as in kd_det2.

    python tools/lazyconfig_train_net.py --num-gpus 8 \
        --config-file projects/PGD/configs/fcos_r50_official.py
"""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .fcos_r50 import dataloader, model, optimizer, train  # noqa: F401

_ITERS = 43975
model.distillers.PGD.official_batch_mask_mixing = True
model.distillers.PGD.official_xy_swap = True
model.distillers.PGD.exclude_padding = False

dataloader.train.total_batch_size = 32
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
optimizer.lr = 0.02
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[29317, 40310, _ITERS]
    ),
    warmup_length=500 / _ITERS,
    warmup_factor=0.001,
)
train.max_iter = _ITERS
train.output_dir = "output/PGD/fcos_r50_official"
