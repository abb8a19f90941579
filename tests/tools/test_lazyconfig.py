"""LazyConfig twins of the yacs configs and tools/lazyconfig_train_net.py (CPU, ~1.5 min)."""

import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_cfg
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from kd_det2.config import get_kd_cfg
from kd_det2.modeling import KDMetaArchBase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "projects", "**", "configs", "*.py"), recursive=True)
)
KD = ["FitNet", "LogitKD"]
RM_PFI = ["RM", "PFI"]
# config -> (type of model, type of the student or None, distiller names)
EXPECTED = {
    "projects/demo/configs/fcos_teacher.py": ("FCOS", None, None),
    "projects/demo/configs/fcos_student.py": ("KDDenseDetector", "FCOS", []),
    "projects/demo/configs/fcos_fitnet.py": ("KDDenseDetector", "FCOS", KD),
    "projects/Baselines/configs/fcos_R_50_fitnet.py": ("KDDenseDetector", "FCOS", KD),
    "projects/Baselines/configs/retinanet_R_50_fitnet.py": ("KDDenseDetector", "RetinaNet", KD),
    "projects/Baselines/configs/faster_rcnn_R_50_fitnet.py": (
        "KDGeneralizedRCNN",
        "GeneralizedRCNN",
        KD,
    ),
    "projects/PGD/configs/fcos_r50.py": ("KDDenseDetector", "FCOS", ["PGD"]),
    "projects/PGD/configs/retinanet_r50.py": ("KDDenseDetector", "RetinaNet", ["PGD"]),
    "projects/PGD/configs/fcos_r50_official.py": ("KDDenseDetector", "FCOS", ["PGD"]),
    "projects/demo/configs/fcos_pgd.py": ("KDDenseDetector", "FCOS", ["PGD"]),
    "projects/demo/configs/gfl_teacher.py": ("GFL", None, None),
    "projects/demo/configs/gfl_student.py": ("KDDenseDetector", "GFL", []),
    "projects/demo/configs/gfl_ld.py": ("KDDenseDetector", "GFL", ["LD"]),
    "projects/demo/configs/gfl_fitnet.py": ("KDDenseDetector", "GFL", ["FitNet"]),
    "projects/LD/configs/gfl_r50.py": ("KDDenseDetector", "GFL", ["LD"]),
    "projects/LD/configs/gfl_r34.py": ("KDDenseDetector", "GFL", ["LD"]),
    "projects/LD/configs/gfl_r18.py": ("KDDenseDetector", "GFL", ["LD"]),
    "projects/RM_PFI/configs/retinanet_r50.py": ("KDDenseDetector", "RetinaNet", RM_PFI),
    "projects/RM_PFI/configs/fcos_r50.py": ("KDDenseDetector", "FCOS", RM_PFI),
    "projects/RM_PFI/configs/gfl_r50.py": ("KDDenseDetector", "GFL", RM_PFI),
    "projects/demo/configs/fcos_rm.py": ("KDDenseDetector", "FCOS", ["RM"]),
    "projects/demo/configs/fcos_pfi.py": ("KDDenseDetector", "FCOS", ["PFI"]),
    "projects/demo/configs/fcos_rm_pfi.py": ("KDDenseDetector", "FCOS", RM_PFI),
    "projects/demo/configs/fcos_logit.py": ("KDDenseDetector", "FCOS", ["LogitKD"]),
    "projects/HGD/configs/retinanet_r50.py": ("KDDenseDetector", "RetinaNet", ["HGD"]),
    "projects/HGD/configs/faster_rcnn_r50.py": (
        "KDGeneralizedRCNN",
        "GeneralizedRCNN",
        ["HGD"],
    ),
    "projects/demo/configs/fcos_hgd.py": ("KDDenseDetector", "FCOS", ["HGD"]),
    "projects/GKD/configs/gfl_r50.py": ("KDDenseDetector", "GFL", ["GKD"]),
    "projects/GKD/configs/faster_rcnn_r50.py": ("KDGeneralizedRCNN", "GeneralizedRCNN", ["GKD"]),
    "projects/demo/configs/gfl_gkd.py": ("KDDenseDetector", "GFL", ["GKD"]),
    "projects/demo/configs/gfl_gkd_bmfi.py": ("KDDenseDetector", "GFL", ["GKD"]),
    "projects/demo/configs/rcnn_teacher.py": ("GeneralizedRCNN", None, None),
    "projects/demo/configs/rcnn_student.py": ("KDGeneralizedRCNN", "GeneralizedRCNN", []),
    "projects/demo/configs/rcnn_gkd.py": ("KDGeneralizedRCNN", "GeneralizedRCNN", ["GKD"]),
}
TOOL = os.path.join("tools", "lazyconfig_train_net.py")
FITNET = "projects/demo/configs/fcos_fitnet.py"


def load_without_teacher_weights(path: str):
    """The LazyConfig at ``path`` with its teacher (if any) built from random weights.

    Returns:
        (config, the teacher's (config_file, weights) as the file sets them, or None)
    """
    cfg = LazyConfig.load(os.path.join(ROOT, path))
    teacher = cfg.model.get("teacher")
    if teacher is None:
        return cfg, None
    original = (teacher.config_file, teacher.weights)
    teacher.require_weights = False
    teacher.weights = ""
    return cfg, original


def yaml_twin(path: str) -> str:
    """projects/X/configs/name.py -> projects/X/name.yaml."""
    folder, name = os.path.split(path)
    return os.path.join(os.path.dirname(folder), os.path.splitext(name)[0] + ".yaml")


def test_configs_found():
    assert set(EXPECTED) <= set(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_instantiates_like_its_yaml_twin(path):
    cfg, teacher = load_without_teacher_weights(path)
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    model = instantiate(cfg.model)
    is_kd = isinstance(model, KDMetaArchBase)
    distillers = list(model.distillers) if is_kd else None
    if path in EXPECTED:
        arch, student_arch, names = EXPECTED[path]
        assert type(model).__name__ == arch
        assert is_kd == (student_arch is not None)
        if is_kd:
            assert type(model.student).__name__ == student_arch and distillers == names
    if is_kd:
        assert (model.teacher is not None) == bool(distillers)
    if not os.path.isfile(os.path.join(ROOT, yaml_twin(path))):
        return

    # Same parameters, buffers, shapes and frozen parts as the model of the yacs config.
    ycfg = get_kd_cfg()
    ycfg.merge_from_file(os.path.join(ROOT, yaml_twin(path)))
    ycfg.MODEL.DEVICE = "cpu"
    if is_kd:
        kd = ycfg.MODEL.KD
        uses_teacher = bool(distillers) or kd.INIT_STUDENT_FROM_TEACHER
        assert teacher == ((kd.TEACHER.CONFIG_FILE, kd.TEACHER.WEIGHTS) if uses_teacher else None)
        assert model.student_input_format == ycfg.INPUT.FORMAT
        assert model.warmup_iters == kd.WARMUP_ITERS
    ycfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    ycfg.MODEL.KD.TEACHER.WEIGHTS = ""
    reference = build_model(ycfg)
    state, ref_state = model.state_dict(), reference.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ref_state.items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in reference.named_parameters() if not p.requires_grad}
    assert str(getattr(model, "distillers", "")) == str(getattr(reference, "distillers", ""))
    if is_kd and distillers:
        assert model.teacher_input_format == reference.teacher_input_format
    assert cfg.dataloader.train.mapper.image_format == ycfg.INPUT.FORMAT
    assert cfg.train.max_iter == ycfg.SOLVER.MAX_ITER
    assert cfg.optimizer.lr == ycfg.SOLVER.BASE_LR
    assert cfg.dataloader.train.total_batch_size == ycfg.SOLVER.IMS_PER_BATCH


@pytest.mark.parametrize("path", ["projects/PGD/configs/fcos_r50.py", FITNET])
def test_student_neck_and_head_start_from_the_teacher(path):
    cfg, _ = load_without_teacher_weights(path)
    model = instantiate(cfg.model)
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    # the neck and the head, except tensors whose shapes differ (the demo's FPN laterals: their
    # inputs are the stages of different backbones)
    outside = [k for k in student if not k.startswith("backbone.bottom_up.")]
    copied = [k for k in outside if student[k].shape == teacher[k].shape]
    assert all(torch.equal(student[k], teacher[k]) for k in copied)
    assert {k for k in outside if k.startswith("head.")} <= set(copied)
    assert {k for k in outside if "lateral" not in k} <= set(copied)
    # the bottom-up networks keep their own weights (convolutions: different random/ImageNet init)
    convs = [
        k
        for k, v in student.items()
        if k.startswith("backbone.bottom_up.") and v.dim() == 4 and k in teacher
    ]
    assert all(not torch.equal(student[k], teacher[k]) for k in convs)


def test_plain_demo_student_drops_the_teacher_after_the_copy():
    cfg, teacher = load_without_teacher_weights("projects/demo/configs/fcos_student.py")
    assert teacher == (
        "projects/demo/fcos_teacher.yaml",
        "output/demo/teacher_fcos/model_final.pth",
    )
    assert cfg.model.init_student_from_teacher
    model = instantiate(cfg.model)
    assert model.teacher is None and not model.distillers


# ------------------------------------------------------------------ tools/lazyconfig_train_net.py
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(tmp, *args: str, threads: int = 2) -> subprocess.CompletedProcess:
    """Run the tool on the demo KD config, tiny and fast: 64 px, mini datasets in ``tmp``."""
    overrides = [
        "dataloader.train.dataset.names=kd_shapes_mini_train",
        "dataloader.test.dataset.names=kd_shapes_mini_val",
        "dataloader.evaluator.dataset_name=kd_shapes_mini_val",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.test.batch_size=8",  # batch 1 takes a much slower CPU conv path
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=64",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=64",
        "model.student.test_topk_candidates=50",
        "model.student.max_detections_per_image=20",
    ]
    env = dict(
        os.environ, KD_DET2_DATASETS=os.path.join(tmp, "datasets"), OMP_NUM_THREADS=str(threads)
    )
    cmd = [
        sys.executable,
        TOOL,
        "--config-file",
        FITNET,
        "--dist-url",
        f"tcp://127.0.0.1:{_free_port()}",
    ]
    proc = subprocess.run(
        cmd + list(args) + overrides, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    """Shared by the tool tests: generated mini datasets, tiny teacher config, checkpoints."""
    tmp = str(tmp_path_factory.mktemp("lazyconfig"))
    with open(os.path.join(tmp, "teacher.yaml"), "w") as f:
        f.write(tiny_cfg("FCOS", depth=18, fpn=64, num_classes=6).dump())  # the demo's FPN width
    return tmp


def teacher_overrides(tmp: str, out: str, max_iter: int) -> list:
    return [
        f"model.teacher.config_file={os.path.join(tmp, 'teacher.yaml')}",
        "model.teacher.require_weights=False",
        "model.teacher.weights=''",
        f"train.max_iter={max_iter}",
        f"train.output_dir={os.path.join(tmp, out)}",
    ]


def _evaluated(proc) -> bool:
    return "copypaste: AP,AP50" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(workdir) -> str:
    """Output folder of a 3-iteration KD run (random tiny teacher) of the demo FitNet config."""
    proc = run_tool(workdir, *teacher_overrides(workdir, "train", 3))
    out = os.path.join(workdir, "train")
    assert _evaluated(proc), "no COCO evaluation after training"
    return out


def test_train_writes_student_checkpoint_and_evaluates(trained):
    path = os.path.join(trained, "model_final.pth")
    assert os.path.isfile(path)
    with open(os.path.join(trained, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    keys = list(ckpt["model"])
    assert any(k.startswith("student.") for k in keys)
    assert not any(k.startswith("teacher.") for k in keys)
    # the demo FitNet imitates equal widths (64 channels): identity adapters, no distiller state
    assert not any(k.startswith("distillers.") for k in keys)
    with open(os.path.join(trained, "metrics.json")) as f:
        assert "loss_kd_fitnet" in f.read()


def test_eval_only_needs_no_teacher(trained, workdir):
    # --eval-only drops the teacher: a teacher that cannot be built does not matter.
    checkpoint = os.path.join(trained, "model_final.pth")
    proc = run_tool(
        workdir,
        "--eval-only",
        f"train.init_checkpoint={checkpoint}",
        f"train.output_dir={os.path.join(workdir, 'eval')}",
        f"model.teacher.config_file={os.path.join(workdir, 'missing.yaml')}",
    )
    assert _evaluated(proc)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_cpu_processes(workdir):
    proc = run_tool(workdir, "--num-gpus", "2", *teacher_overrides(workdir, "ddp", 2), threads=1)
    out = os.path.join(workdir, "ddp")
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert _evaluated(proc)
    # two processes ran: detectron2 reports the world size and rank 1 writes its own log
    assert "World size: 2" in proc.stdout + proc.stderr
    assert os.path.isfile(os.path.join(out, "log.txt.rank1"))
