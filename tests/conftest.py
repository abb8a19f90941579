"""Shared builders of tiny configs, models and batches for the tests (CPU, seconds each).

The tests are isolated from the environment: the ``KD_DET2_*`` and ``DETECTRON2_DATASETS``
variables of the calling shell are removed before kd_det2 is imported (they choose datasets and
backends), and generated datasets go to a temporary folder removed at exit, not the repository.
"""

import atexit
import contextlib
import os
import shutil
import tempfile

ISOLATED_VARIABLES = sorted(
    k for k in os.environ if k.startswith("KD_DET2_") or k == "DETECTRON2_DATASETS"
)
for _key in ISOLATED_VARIABLES:
    del os.environ[_key]
DATA_ROOT = tempfile.mkdtemp(prefix="kd_det2_tests_")
os.environ["KD_DET2_DATASETS"] = DATA_ROOT  # kd_shapes generated here (subprocesses inherit it)
atexit.register(shutil.rmtree, DATA_ROOT, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from kd_det2.config import get_kd_cfg  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

_BACKBONES = {
    "FCOS": "build_fcos_resnet_fpn_backbone",
    "GFL": "build_fcos_resnet_fpn_backbone",
    "RetinaNet": "build_retinanet_resnet_fpn_backbone",
    "GeneralizedRCNN": "build_resnet_fpn_backbone",
}
WRAPPERS = {
    "FCOS": "KDDenseDetector",
    "GFL": "KDDenseDetector",
    "RetinaNet": "KDDenseDetector",
    "GeneralizedRCNN": "KDGeneralizedRCNN",
}


def tiny_cfg(arch="FCOS", depth=18, fpn=32, num_classes=3):
    """A plain (non-KD) config of a tiny detector: ResNet-`depth`, FPN width `fpn`, 64 px."""
    cfg = get_kd_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = _BACKBONES[arch]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
    levels = (
        ["res2", "res3", "res4", "res5"] if arch == "GeneralizedRCNN" else ["res3", "res4", "res5"]
    )
    cfg.MODEL.RESNETS.OUT_FEATURES = levels
    cfg.MODEL.FPN.IN_FEATURES = levels
    cfg.MODEL.FPN.OUT_CHANNELS = fpn
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.FCOS.NORM = "GN" if fpn >= 64 else ""  # GN(32) needs > 1 value per group on P7
    cfg.MODEL.GFL.NUM_CLASSES = num_classes
    cfg.MODEL.GFL.NUM_CONVS = 1
    cfg.MODEL.GFL.NORM = cfg.MODEL.FCOS.NORM
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 256
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    if arch == "GeneralizedRCNN":
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    return cfg


def kd_cfg(
    tmp_path,
    arch="FCOS",
    student_depth=18,
    student_fpn=32,
    teacher_depth=18,
    teacher_fpn=64,
    distillers=("FitNet", "LogitKD"),
    teacher_weights=None,
    **teacher_kw,
):
    """A KD config: tiny student + tiny teacher written to `tmp_path/teacher.yaml`."""
    teacher = tiny_cfg(arch, teacher_depth, teacher_fpn, **teacher_kw)
    path = os.path.join(str(tmp_path), "teacher.yaml")
    with open(path, "w") as f:
        f.write(teacher.dump())
    cfg = tiny_cfg(arch, student_depth, student_fpn)
    cfg.MODEL.KD.STUDENT_META_ARCHITECTURE = arch
    cfg.MODEL.META_ARCHITECTURE = WRAPPERS[arch]
    cfg.MODEL.KD.DISTILLERS = list(distillers)
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = path
    if teacher_weights is None:
        cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    else:
        cfg.MODEL.KD.TEACHER.WEIGHTS = teacher_weights
    return cfg


def make_batch(n=2, size=64, num_classes=3, boxes_per_image=(2, 0), seed=0):
    """Random images with random GT boxes; the second image has no boxes by default."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        img = torch.rand(3, size, size, generator=g) * 255
        k = boxes_per_image[i % len(boxes_per_image)]
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = torch.rand(k, 2, generator=g) * size * 0.35 + 6
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
        batch.append({"image": img, "instances": inst, "height": size, "width": size})
    return batch


@contextlib.contextmanager
def catalog_without(names):
    """Remove dataset registrations ``names`` for the duration; restore them afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    saved = {
        n: (DatasetCatalog.data.pop(n, None), MetadataCatalog.data.pop(n, None)) for n in names
    }
    try:
        yield
    finally:
        for n, (func, meta) in saved.items():
            DatasetCatalog.data.pop(n, None)
            MetadataCatalog.data.pop(n, None)
            if func is not None:
                DatasetCatalog.data[n] = func
            if meta is not None:
                MetadataCatalog.data[n] = meta


def write_voc_xml(path, width, height, objects):
    """A VOC annotation file: <size> (omitted when width is None) and one <object> per
    (name, xmin, ymin, xmax, ymax)."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1 in objects
    )
    size = "" if width is None else f"<size><width>{width}</width><height>{height}</height></size>"
    with open(path, "w") as f:
        f.write(f"<annotation><filename>x.jpg</filename>{size}{objs}</annotation>")


def write_voc(root, images, splits, labels=None):
    """A tiny VOC folder in ``root``: ``images`` maps an id to (width, height, objects); each id
    gets ``Annotations/<id>.xml`` and a JPEG of that size; ``splits`` maps a split name to its
    ids (``ImageSets/Main/<split>.txt``); ``labels`` (a list) is written to labels.txt."""
    from PIL import Image

    root = str(root)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, (image_id, (width, height, objects)) in enumerate(images.items()):
        write_voc_xml(os.path.join(root, "Annotations", f"{image_id}.xml"), width, height, objects)
        image = Image.new("RGB", (width, height), (40 * i % 255, 90, 160))
        image.save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), quality=90)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    if labels is not None:
        with open(os.path.join(root, "labels.txt"), "w") as f:
            f.write("".join(f"{n}\n" for n in labels))
    return root


@pytest.fixture
def batch():
    return make_batch()
