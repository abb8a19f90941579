"""Two-process CPU DDP (GLOO) through tools/train_net.py and detectron2's launch, with every
registered distiller in one config, so that unused parameters or rank-dependent shapes fail."""

import os
import socket
import subprocess
import sys

import torch
from conftest import kd_cfg

from kd_det2.modeling.distillers import KD_DISTILLER_REGISTRY, registered_distillers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILY = "GFL"  # the family every distiller supports (LD needs a distribution head)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supports(name: str) -> bool:
    cls = KD_DISTILLER_REGISTRY.get(name)
    return "dense" in cls.supported_kinds and (
        cls.supported_archs is None or FAMILY in cls.supported_archs
    )


def test_two_process_cpu_ddp_with_every_distiller(tmp_path):
    names = registered_distillers()
    assert all(_supports(n) for n in names), "a distiller without GFL support needs its own run"
    cfg = kd_cfg(tmp_path, FAMILY, num_classes=6, distillers=names)
    cfg.MODEL.GFL.NUM_CLASSES = 6
    cfg.MODEL.KD.FITNET.LOSS_WEIGHT = 1e-4  # random teacher: huge FPN activations
    cfg.DATASETS.TRAIN = ("kd_shapes_mini_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 4  # 2 images per process
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    path = tmp_path / "kd.yaml"
    path.write_text(cfg.dump())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "tools/train_net.py", "--config-file", str(path), "--num-gpus", "2"]
    cmd += ["--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # two processes ran: detectron2 reports the world size and rank 1 writes its own log
    assert "World size: 2" in log
    assert (tmp_path / "out" / "log.txt.rank1").is_file()
    state = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert state["iteration"] == 1
    assert not any(k.startswith(("teacher.", "module.")) for k in state["model"])
    assert any(k.startswith("distillers.FitNet.adapters") for k in state["model"])
