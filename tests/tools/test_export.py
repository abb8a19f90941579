"""tools/export_student.py: the exported student loads into vanilla detectron2 (no kd_det2;
GFL, which detectron2 lacks: kd_det2 without the KD wrapper)."""

import os
import subprocess
import sys

import torch
from conftest import kd_cfg, make_batch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh interpreter that never imports kd_det2: builds the vanilla model, loads the
# exported weights strictly, and saves its outputs on the batch for comparison. It runs as many
# threads as the test process, so that both sum their convolutions in the same order.
VANILLA = r"""
import sys, torch
assert "kd_det2" not in sys.modules
from detectron2.checkpoint import DetectionCheckpointer
arch, cfg_path, weights, batch_path, out_path, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
if arch == "FCOS":
    from detectron2 import model_zoo
    from detectron2.config import instantiate
    from detectron2.layers import ShapeSpec
    m = model_zoo.get_config("common/models/fcos.py").model
    m.backbone.bottom_up.stem.norm = "BN"
    m.backbone.bottom_up.stages.depth = 18
    m.backbone.bottom_up.stages.norm = "BN"
    del m.backbone.bottom_up.stages.stride_in_1x1  # not an argument of R18 basic blocks
    m.backbone.out_channels = 32
    m.backbone.top_block.in_channels = 32
    m.head.input_shape = [ShapeSpec(channels=32)] * 5
    m.head.conv_dims = [32]
    m.head.norm = ""
    m.num_classes = 3
    m.test_score_thresh = 0.0
    model = instantiate(m)
else:
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    cfg = get_cfg()
    if arch == "GFL":  # not in detectron2: kd_det2 registers it and its MODEL.GFL keys
        from kd_det2.config import add_gfl_config
        add_gfl_config(cfg)
    cfg.merge_from_file(cfg_path)
    model = build_model(cfg)
state = torch.load(weights, weights_only=False)["model"]
result = model.load_state_dict(state, strict=False)
assert not result.missing_keys and not result.unexpected_keys, result
DetectionCheckpointer(model).load(weights)
model.eval()
with torch.no_grad():
    out = model(torch.load(batch_path, weights_only=False))
torch.save([o["instances"].get_fields() for o in out], out_path)
print("vanilla ok", type(model).__name__)
"""


def _export_and_compare(tmp_path, arch):
    cfg = kd_cfg(tmp_path, arch)
    # score threshold 0: every image has detections to compare (random weights score low)
    for node in (cfg.MODEL.FCOS, cfg.MODEL.GFL, cfg.MODEL.RETINANET, cfg.MODEL.ROI_HEADS):
        node.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():  # one step so that BN statistics are not the defaults
        model(make_batch(seed=3))
    model.eval()
    ckpt = tmp_path / "kd.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, ckpt)
    cfg_file = tmp_path / "kd.yaml"
    cfg_file.write_text(cfg.dump())

    out = tmp_path / "export" / "student.pth"
    subprocess.run(
        [
            sys.executable,
            "tools/export_student.py",
            "--config-file",
            str(cfg_file),
            "--weights",
            str(ckpt),
            "--output",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.is_file() and (tmp_path / "export" / "student.yaml").is_file()
    exported = torch.load(out, weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "distillers.", "student.")) for k in exported)

    batch = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch(seed=5)]
    batch_path = tmp_path / "batch.pt"
    torch.save(batch, batch_path)
    result = tmp_path / "vanilla_out.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            VANILLA,
            arch,
            str(tmp_path / "export" / "student.yaml"),
            str(out),
            str(batch_path),
            str(result),
            str(torch.get_num_threads()),
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        ours = model(batch)
    theirs = torch.load(result, weights_only=False)
    assert len(ours) == len(theirs) == len(batch)
    for a, b in zip(ours, theirs):
        a = a["instances"]
        assert len(a) == len(b["scores"]) > 0
        assert torch.equal(a.pred_classes, b["pred_classes"])
        assert torch.allclose(a.pred_boxes.tensor, b["pred_boxes"].tensor)
        assert torch.allclose(a.scores, b["scores"])


def test_export_retinanet_student(tmp_path):
    _export_and_compare(tmp_path, "RetinaNet")


def test_export_faster_rcnn_student(tmp_path):
    _export_and_compare(tmp_path, "GeneralizedRCNN")


def test_export_fcos_student_into_detectron2_lazy_fcos(tmp_path):
    _export_and_compare(tmp_path, "FCOS")


def test_export_gfl_student_keeps_its_config_node(tmp_path):
    _export_and_compare(tmp_path, "GFL")
