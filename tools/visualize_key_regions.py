#!/usr/bin/env python
"""Draw the teacher's PGD key-region weights over images, with their GT boxes.

    python tools/visualize_key_regions.py --config-file projects/demo/fcos_pgd.yaml \
        --dataset kd_shapes_val --indices 0 1 2 3 --output output/key_regions [KEY VALUE ...]

For each image, one PNG: two rows (classification weights W^cls, xi = XI_CLS; regression weights
W^reg, xi = XI_REG), one column per FPN level plus the max over levels ("merged"), the weights as
a heat map over the image and the GT boxes in white. Locations are drawn as the stride-sized cells
they stand for. The teacher must be loadable from the config (MODEL.KD.TEACHER.*).
"""
import argparse
import os
from typing import List

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import kd_det2  # noqa: F401
from kd_det2.config import get_kd_cfg
from kd_det2.data import prepare_dataset
from kd_det2.modeling.distillers import PGD
from kd_det2.modeling.meta_arch import KDDenseDetector


def heat_panel(image: np.ndarray, weights: np.ndarray, boxes: np.ndarray, title: str, scale: int):
    """RGB ``image`` (H, W, 3) uint8 with ``weights`` (H, W) in [0, 1] as a heat map, GT boxes
    (G, 4) XYXY (white, black outline) and a title; enlarged ``scale`` times."""
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    heat = cv2.resize(weights, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    alpha = (0.15 + 0.6 * heat)[..., None]
    panel = (big * (1 - alpha) + colour * alpha).astype(np.uint8)
    for x0, y0, x1, y1 in (boxes * scale).astype(int):
        cv2.rectangle(panel, (x0, y0), (x1, y1), (0, 0, 0), 3)
        cv2.rectangle(panel, (x0, y0), (x1, y1), (255, 255, 255), 1)
    cv2.putText(panel, title, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return panel


def level_maps(maps: List[torch.Tensor], padded_h: int, size, index: int) -> List[np.ndarray]:
    """Per-level (N, 1, Hi, Wi) maps of image ``index`` -> (H, W) arrays: each location becomes
    its stride x stride cell of the padded input (height ``padded_h``), cropped to ``size``."""
    h, w = size
    out = []
    for m in maps:
        stride = padded_h // m.shape[-2]
        up = torch.nn.functional.interpolate(m[index : index + 1].float(), scale_factor=stride)
        out.append(up[0, 0, :h, :w].cpu().numpy())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="a KD config with the PGD distiller")
    parser.add_argument(
        "--dataset",
        default="kd_shapes_val",
        help="registered dataset name, or voc:<dir>:<split> or coco:<file.json>[:<image folder>]",
    )
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--output", default="output/key_regions")
    parser.add_argument("--scale", type=int, default=3, help="enlargement of each panel")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)

    cfg = get_kd_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    model = build_model(cfg).eval()
    pgd = [d for d in model.distillers.values() if isinstance(d, PGD)]
    if not isinstance(model, KDDenseDetector) or not pgd:
        raise SystemExit(f"{args.config_file} has no PGD distiller (MODEL.KD.DISTILLERS)")
    prepare_dataset(args.dataset)
    dicts = DatasetCatalog.get(args.dataset)
    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    batch = [mapper(dicts[i]) for i in args.indices]
    with torch.no_grad():
        teacher = KDDenseDetector.capture(model.teacher, model.teacher_inputs(batch))[0]
        gt = [x["instances"].to(model.device) for x in batch]
        w_cls, w_reg, _ = pgd[0].key_region_maps(teacher, gt)

    os.makedirs(args.output, exist_ok=True)
    names = list(teacher.head_in_features) + ["merged"]
    for i, item in enumerate(batch):
        image = item["image"].permute(1, 2, 0).numpy().astype(np.uint8)
        if cfg.INPUT.FORMAT == "BGR":
            image = image[..., ::-1].copy()
        boxes = item["instances"].gt_boxes.tensor.numpy()
        rows = []
        for label, maps, xi in (("cls", w_cls, pgd[0].xis[0]), ("reg", w_reg, pgd[0].xis[1])):
            per_level = level_maps(maps, teacher.images.tensor.shape[-2], image.shape[:2], i)
            per_level.append(np.max(per_level, axis=0))
            panels = [
                heat_panel(image, m, boxes, f"{label} xi={xi} {n}", args.scale)
                for m, n in zip(per_level, names)
            ]
            rows.append(np.concatenate(panels, axis=1))
        path = os.path.join(args.output, f"key_regions_{args.indices[i]:05d}.png")
        cv2.imwrite(path, np.concatenate(rows, axis=0)[..., ::-1])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
