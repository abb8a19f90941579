#!/usr/bin/env python
"""Export the student of a KD checkpoint as a plain detectron2 checkpoint and config.

    python tools/export_student.py --config-file projects/demo/fcos_fitnet.yaml \
        --weights output/demo/kd_fcos_fitnet/model_final.pth --output student.pth

Writes ``student.pth`` ({"model": student state dict}, no teacher, no adapters) and the student's
own config next to it: ``student.yaml`` for a yacs config (MODEL.META_ARCHITECTURE set to the
student's, every key that kd_det2 adds removed), ``student.py.yaml`` (a LazyConfig dump of
``model.student``) for a LazyConfig. The checkpoint loads with ``DetectionCheckpointer`` into a
vanilla detectron2 model built from that config, without importing kd_det2, except for FCOS
students from a yacs config: vanilla detectron2 builds FCOS from LazyConfig only, so build
``detectron2.modeling.meta_arch.fcos.FCOS`` with the same settings (the parameter names are the
same) or keep kd_det2 importable to read the yaml; and for GFL students, which detectron2 does
not have (``import kd_det2`` registers GFL; ``MODEL.GFL`` is kept in ``student.yaml``), and for
students with a kd_det2 backbone (MobileNetV2, EfficientNet-Lite: ``import kd_det2`` registers
them; their node, e.g. ``MODEL.MOBILENET_V2``, is kept in ``student.yaml``).
"""
import argparse
import logging
import os
from typing import Dict

import torch

logger = logging.getLogger("kd_det2.export")

_PREFIX = "student."


def student_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The student's tensors of a KD-wrapper checkpoint, with the ``student.`` prefix removed.

    Raises:
        ValueError: the checkpoint is not one of a KD wrapper.
    """
    state = checkpoint.get("model", checkpoint)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    student = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not student:
        raise ValueError(
            "No 'student.*' tensors in this checkpoint: it is not a kd_det2 KD checkpoint (a plain "
            "detector checkpoint needs no export)."
        )
    return student


def export_yacs_config(config_file: str, opts, path: str) -> str:
    """Write the student's own yacs config (KD keys removed) to ``path``; return the arch."""
    from detectron2.config import get_cfg

    from kd_det2.config import get_kd_cfg
    from kd_det2.modeling.backbones import backbone_config_node

    cfg = get_kd_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch.startswith("KD"):
        arch = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.WEIGHTS = ""
    keep = {("MODEL", arch.upper())}  # the student's own node: MODEL.FCOS, MODEL.GFL
    node = backbone_config_node(cfg.MODEL.BACKBONE.NAME)  # e.g. MODEL.MOBILENET_V2
    if node:
        keep.add(("MODEL", node))
    _drop_keys_missing_from(cfg, get_cfg(), keep)
    with open(path, "w") as f:
        f.write(cfg.dump())
    return arch


def _drop_keys_missing_from(cfg, vanilla, keep, prefix=()) -> None:
    """Delete (recursively) the keys of ``cfg`` that ``vanilla`` lacks (kd_det2's additions), but
    those whose key path is in ``keep``."""
    for key in list(cfg.keys()):
        path = prefix + (key,)
        if path in keep:
            continue
        if key not in vanilla:
            del cfg[key]
        elif isinstance(cfg[key], dict) and isinstance(vanilla[key], dict):
            _drop_keys_missing_from(cfg[key], vanilla[key], keep, path)


def export_lazy_config(config_file: str, opts, path: str) -> str:
    """Write ``model.student`` of a LazyConfig (as ``model``) to ``path``; return the arch."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
    student = cfg.model.get("student", cfg.model)
    LazyConfig.save(OmegaConf.create({"model": student}), path)
    target = student["_target_"]
    return target if isinstance(target, str) else target.__name__


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the KD config (.yaml or .py)")
    parser.add_argument("--weights", required=True, help="KD checkpoint (e.g. model_final.pth)")
    parser.add_argument("--output", required=True, help="output checkpoint path (.pth)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    checkpoint = torch.load(args.weights, map_location="cpu", weights_only=False)
    state = student_state_dict(checkpoint)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    torch.save({"model": state}, tmp)
    os.replace(tmp, args.output)
    stem = os.path.splitext(args.output)[0]
    if args.config_file.endswith(".py"):
        cfg_path = stem + ".py.yaml"
        arch = export_lazy_config(args.config_file, args.opts, cfg_path)
    else:
        cfg_path = stem + ".yaml"
        arch = export_yacs_config(args.config_file, args.opts, cfg_path)
    logger.info(f"Student ({arch}, {len(state)} tensors) written to {args.output}")
    logger.info(f"Student config written to {cfg_path}")


if __name__ == "__main__":
    main()
