"""tools/visualize_key_regions.py writes one overlay PNG per image."""

import os
import sys

import cv2
from conftest import kd_cfg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import visualize_key_regions  # noqa: E402


def test_visualize_key_regions_writes_pngs(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", num_classes=6, distillers=("PGD",))
    cfg.MODEL.FCOS.NUM_CLASSES = 6
    path = tmp_path / "pgd.yaml"
    path.write_text(cfg.dump())
    out = tmp_path / "vis"
    visualize_key_regions.main(
        [
            "--config-file",
            str(path),
            "--dataset",
            "kd_shapes_mini_val",
            "--indices",
            "0",
            "2",
            "--output",
            str(out),
            "--scale",
            "2",
        ]
    )
    files = sorted(os.listdir(out))
    assert files == ["key_regions_00000.png", "key_regions_00002.png"]
    image = cv2.imread(str(out / files[0]))
    # 2 rows (cls, reg) x 6 columns (P3-P7 + merged) of 64 px panels enlarged twice
    assert image.shape == (2 * 64 * 2, 6 * 64 * 2, 3)
