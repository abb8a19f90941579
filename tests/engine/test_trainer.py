"""Training through KDTrainer: frozen teacher, checkpoints, resume, init weights, evaluation."""

import copy
import glob
import os

import pytest
import torch
from conftest import kd_cfg, tiny_cfg
from detectron2.modeling import build_model

from kd_det2.engine import KDCheckpointer, KDTrainer


def _train_cfg(tmp_path, max_iter=4, **kw):
    cfg = kd_cfg(tmp_path, "FCOS", num_classes=6, **kw)
    cfg.MODEL.FCOS.NUM_CLASSES = 6
    cfg.DATASETS.TRAIN = ("kd_shapes_mini_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.MODEL.KD.FITNET.LOSS_WEIGHT = 1e-4  # a random teacher has huge FPN activations
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_teacher_unchanged_after_training_and_checkpoints_are_clean(tmp_path):
    cfg = _train_cfg(tmp_path)
    trainer = KDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    teacher = trainer.model.teacher
    before = _snapshot(teacher)  # parameters and BN running statistics
    student_before = _snapshot(trainer.model.student)
    trainer.train()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training
    assert any(
        not torch.equal(student_before[k], v) for k, v in trainer.model.student.state_dict().items()
    )
    ckpts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cfg.OUTPUT_DIR, "*.pth")))
    assert ckpts == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    assert not glob.glob(os.path.join(cfg.OUTPUT_DIR, "*.tmp*"))
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)
    assert not any(k.startswith("teacher.") for k in state["model"])
    assert any(k.startswith("distillers.") for k in state["model"])
    assert state["iteration"] == 3


def test_resume_continues_where_training_stopped(tmp_path):
    cfg = _train_cfg(tmp_path, max_iter=4)
    trainer = KDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = _snapshot(trainer.model)

    cfg2 = cfg.clone()
    cfg2.SOLVER.MAX_ITER = 6
    resumed = KDTrainer(cfg2)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    current = resumed.model.state_dict()
    assert all(torch.equal(saved[k], current[k]) for k in saved)  # student and adapters
    resumed.train()
    assert resumed.iter == 6  # detectron2 leaves iter at max_iter after the loop
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_0000005.pth"))


def test_init_weights_load_into_the_student_only(tmp_path):
    # a plain detector checkpoint (same architecture as the student) as MODEL.WEIGHTS
    plain = build_model(tiny_cfg("FCOS", 18, 32, num_classes=6))
    path = tmp_path / "plain.pth"
    torch.save({"model": plain.state_dict()}, path)
    cfg = _train_cfg(tmp_path)
    cfg.MODEL.WEIGHTS = str(path)
    trainer = KDTrainer(cfg)
    teacher_before = _snapshot(trainer.model.teacher)
    trainer.resume_or_load(resume=False)
    student = trainer.model.student.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in plain.state_dict().items())
    teacher_after = trainer.model.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)


def test_checkpointer_writes_atomically(tmp_path, monkeypatch):
    model = build_model(tiny_cfg("FCOS"))
    ckpt = KDCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("good")
    good = (tmp_path / "good.pth").read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save("next")
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save("good")  # overwriting an existing checkpoint fails the same way
    monkeypatch.undo()
    # the earlier checkpoint is intact and still the last one; no partial file is left behind
    assert (tmp_path / "good.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "good.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pth", "last_checkpoint"]


def test_evaluation_with_coco_evaluator(tmp_path):
    cfg = _train_cfg(tmp_path, distillers=())
    cfg.DATASETS.TEST = ("kd_shapes_mini_val",)
    model = KDTrainer.build_model(cfg)
    results = KDTrainer.test(cfg, model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_coco_scale_pgd_config_builds_and_starts_training(tmp_path, monkeypatch):
    """projects/PGD/fcos_r50.yaml (R101 teacher -> R50 student) runs a step when data and
    weights exist: here a stand-in teacher checkpoint and the mini kd_shapes set."""
    from kd_det2.config import get_kd_cfg

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(repo)
    small = ["MODEL.DEVICE", "cpu", "MODEL.FCOS.NUM_CLASSES", 6]
    teacher_cfg = get_kd_cfg()
    teacher_cfg.merge_from_file("projects/teachers/FCOS_R_101_FPN_3x.yaml")
    teacher_cfg.merge_from_list(small)
    teacher = build_model(teacher_cfg)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")

    cfg = get_kd_cfg()
    cfg.merge_from_file("projects/PGD/fcos_r50.yaml")
    cfg.merge_from_list(
        small
        + [
            "MODEL.WEIGHTS",
            "",
            "MODEL.KD.TEACHER.WEIGHTS",
            str(tmp_path / "teacher.pth"),
            "MODEL.KD.TEACHER.OPTS",
            ["MODEL.FCOS.NUM_CLASSES", 6],
            "MODEL.KD.FITNET.LOSS_WEIGHT",
            1e-9,  # random R101 features are huge
            "DATASETS.TRAIN",
            ("kd_shapes_mini_train",),
            "DATASETS.TEST",
            (),
            "INPUT.MIN_SIZE_TRAIN",
            (64,),
            "INPUT.MAX_SIZE_TRAIN",
            64,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.MAX_ITER",
            1,
            "DATALOADER.NUM_WORKERS",
            0,
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    trainer = KDTrainer(cfg)
    model = trainer.model
    assert type(model.teacher.backbone.bottom_up.res4[0]).__name__ == "BottleneckBlock"
    assert (
        len(model.teacher.backbone.bottom_up.res4) == 23
        and len(model.student.backbone.bottom_up.res4) == 6
    )
    # INIT_STUDENT_FROM_TEACHER: neck and head come from the teacher
    assert torch.equal(model.student.head.cls_score.weight, model.teacher.head.cls_score.weight)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 1


def _load_tool(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_resume_restores_optimizer_scheduler_iteration_and_teacher(tmp_path, monkeypatch):
    """tools/train_net.py --resume after an interruption at iteration 2: momentum buffers,
    scheduler position, iteration and student come from the checkpoint, the teacher from
    MODEL.KD.TEACHER.WEIGHTS (it is never in a checkpoint)."""
    from detectron2.engine import default_argument_parser

    torch.manual_seed(7)
    teacher = build_model(tiny_cfg("FCOS", 18, 64, num_classes=6))
    teacher_path = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, teacher_path)
    cfg = _train_cfg(tmp_path, max_iter=4, teacher_weights=str(teacher_path))
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.STEPS = (3,)
    cfg_path = tmp_path / "kd.yaml"
    cfg_path.write_text(cfg.dump())
    train_net = _load_tool("train_net")
    argv = ["--config-file", str(cfg_path)]
    train_net.main(default_argument_parser().parse_args(argv))

    out = tmp_path / "out"
    for name in ("model_0000003.pth", "model_final.pth"):  # interrupted after iteration 2
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    ckpt = torch.load(out / "model_0000001.pth", weights_only=False)
    seen = {}
    original_train = KDTrainer.train

    def recording_train(self):
        seen["start_iter"] = self.start_iter
        seen["optimizer"] = copy.deepcopy(self.optimizer.state_dict())  # live tensors
        seen["scheduler"] = copy.deepcopy(self.scheduler.state_dict())
        seen["teacher"] = _snapshot(self.model.teacher)
        seen["student"] = _snapshot(self.model.student)
        return original_train(self)

    monkeypatch.setattr(KDTrainer, "train", recording_train)
    train_net.main(default_argument_parser().parse_args(argv + ["--resume"]))

    assert seen["start_iter"] == ckpt["iteration"] + 1 == 2
    saved_opt = ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    assert saved_opt and any("momentum_buffer" in s for s in saved_opt.values())
    for idx, state in saved_opt.items():
        for key, value in state.items():
            assert torch.equal(seen["optimizer"]["state"][idx][key], value), (idx, key)
    assert (
        seen["scheduler"]["last_epoch"]
        == 2
        == ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    )
    assert all(torch.equal(v, seen["teacher"][k]) for k, v in teacher.state_dict().items())
    student_ckpt = {
        k[len("student.") :]: v for k, v in ckpt["model"].items() if k.startswith("student.")
    }
    assert all(torch.equal(v, seen["student"][k]) for k, v in student_ckpt.items())
    assert (out / "model_final.pth").is_file()
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 3
