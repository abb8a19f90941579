"""Two-process CPU DDP (GLOO) through tools/train_net.py and detectron2's launch."""

import os
import subprocess
import sys

import torch
from conftest import kd_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_process_cpu_ddp_kd_training(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", num_classes=6)
    cfg.MODEL.FCOS.NUM_CLASSES = 6
    cfg.MODEL.KD.FITNET.LOSS_WEIGHT = 1e-4  # random teacher: huge FPN activations
    cfg.DATASETS.TRAIN = ("kd_shapes_mini_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 4  # 2 images per process
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    path = tmp_path / "kd.yaml"
    path.write_text(cfg.dump())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", str(path), "--num-gpus", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    state = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert state["iteration"] == 2
    assert not any(k.startswith(("teacher.", "module.")) for k in state["model"])
    assert any(k.startswith("distillers.FitNet.adapters") for k in state["model"])
