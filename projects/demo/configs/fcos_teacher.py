"""LazyConfig twin of projects/demo/fcos_teacher.yaml (+ Base-Shapes-FCOS.yaml).

Demo teacher: FCOS with an ImageNet-pretrained EfficientNet-Lite2 backbone (FrozenBN, stem +
stage2 frozen; RGB input normalised as (x - 127) / 128), a 64-channel FPN on stage3-stage5 (no
norm; P6/P7 from P5) and 2-conv GN towers, trained 400 iterations on CPU on the embedded kd_shapes
dataset (128 px images, 6 classes). The demo students (fcos_student.py) share the neck and head.

    python tools/lazyconfig_train_net.py --config-file projects/demo/configs/fcos_teacher.py
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from kd_det2.modeling.backbones import EfficientNetLiteBackbone

# Model: detectron2's FCOS (FPN with P6/P7 from P5, like build_fcos_efficientnet_lite_fpn_backbone).
model = model_zoo.get_config("common/models/fcos.py").model
model.backbone.bottom_up = L(EfficientNetLiteBackbone)(
    variant="lite2",
    out_features=["stage2", "stage3", "stage4", "stage5"],
    norm="FrozenBN",
    freeze_at=2,  # MODEL.BACKBONE.FREEZE_AT: the stem and stage2
    pretrained="imagenet",
)
model.backbone.in_features = ["stage3", "stage4", "stage5"]
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = "${..out_channels}"
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]  # MODEL.FCOS.NUM_CONVS: 2
model.head.norm = "GN"
model.num_classes = 6
model.test_score_thresh = 0.05
model.pixel_mean = [127.0, 127.0, 127.0]  # EfficientNet-Lite normalisation, RGB, 0-255 units
model.pixel_std = [128.0, 128.0, 128.0]

# Data: kd_shapes at 128 px, RGB images, horizontal flips for training.
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "kd_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"  # INPUT.FORMAT (the test mapper follows it)
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
# The teacher trains 400 iterations, the students 300 (see fcos_student.py).
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


lr_multiplier = _schedule(400)

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = ""  # the backbone's ImageNet weights come with its `pretrained`
train.max_iter = 400
train.device = "cpu"
train.seed = 0
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 100000
train.output_dir = "output/demo/teacher_fcos"
