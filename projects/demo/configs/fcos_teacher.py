"""LazyConfig twin of projects/demo/fcos_R_18_FPN128_teacher.yaml (+ Base-Shapes-FCOS.yaml).

Demo teacher: plain FCOS R18-FPN with 128 channels and 4-conv towers, trained from scratch on CPU
on the embedded kd_shapes dataset (128 px images, 6 classes), with BN in the backbone and the FPN.

    python tools/lazyconfig_train_net.py \
        --config-file projects/demo/configs/fcos_R_18_FPN128_teacher.py
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

# Model: detectron2's FCOS (P6/P7 from P5, like the yacs build_fcos_resnet_fpn_backbone).
model = model_zoo.get_config("common/models/fcos.py").model
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # basic blocks have no 1x1 conv
model.backbone.bottom_up.freeze_at = 0  # from scratch: train every stage (MODEL.BACKBONE.FREEZE_AT)
model.backbone.norm = "BN"
model.backbone.out_channels = 128
model.backbone.top_block.in_channels = "${..out_channels}"
model.head.input_shape = [ShapeSpec(channels=128)] * 5
model.head.conv_dims = [128] * 4  # MODEL.FCOS.NUM_CONVS: 4
model.head.norm = "GN"
model.num_classes = 6
model.test_score_thresh = 0.05
model.pixel_std = [57.375, 57.120, 58.395]

# Data: kd_shapes at 128 px, horizontal flips for training.
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "kd_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.use_instance_mask = False
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "kd_shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)
]
dataloader.test.num_workers = 1
dataloader.evaluator.dataset_name = "${..test.dataset.names}"
dataloader.evaluator.use_fast_impl = False

# Solver: AdamW lr 1e-3, weight decay 0.05, batch 8, 50 linear warm-up iterations; x0.1 at 80%.
# The teacher trains 360 iterations, the students 200 (see fcos_R_18_student.py).
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 0.001
optimizer.weight_decay = 0.05


def _schedule(max_iter: int):
    """Warm-up + one x0.1 step at 80% of ``max_iter`` (SOLVER.STEPS of the yaml twins)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1], milestones=[int(max_iter * 0.8)], num_updates=max_iter
        ),
        warmup_length=50 / max_iter,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier = _schedule(360)

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = ""
train.max_iter = 360
train.device = "cpu"
train.seed = 0
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 100000
train.output_dir = "output/demo/teacher_fcos_R_18_FPN128"
