"""KD meta-architectures: forward/backward, frozen teacher, checkpoints, inference, errors."""

import pytest
import torch
from conftest import kd_cfg, make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

CASES = [
    # (student arch, student depth, teacher depth): smaller and larger teachers
    ("FCOS", 18, 50),
    ("RetinaNet", 18, 34),
    ("GeneralizedRCNN", 18, 18),
    ("FCOS", 50, 18),
]


def _train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    return losses


def _captured(model):
    """(student, teacher) DetectorOutputs of one training step on a random batch."""
    batch = make_batch()
    model.train()
    with EventStorage():
        _, s = model.student_step(batch, [x["instances"] for x in batch])
        with torch.no_grad():
            t = model.teacher_step(model.teacher_inputs(batch), s)
    return s, t


@pytest.mark.parametrize("arch,s_depth,t_depth", CASES)
def test_forward_backward_finite(tmp_path, arch, s_depth, t_depth):
    cfg = kd_cfg(tmp_path, arch, student_depth=s_depth, teacher_depth=t_depth)
    model = build_model(cfg)
    losses = _train_step(model, make_batch(boxes_per_image=(3, 1)))
    assert {"loss_kd_fitnet", "loss_kd_logit"} <= set(losses)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None for p in model.student.parameters())
    adapters = list(model.distillers["FitNet"].parameters())
    assert adapters and all(p.grad is not None for p in adapters)  # 32 -> 64 channels


@pytest.mark.parametrize("arch", ["FCOS", "RetinaNet", "GeneralizedRCNN"])
def test_images_without_boxes_give_finite_losses(tmp_path, arch):
    model = build_model(kd_cfg(tmp_path, arch))
    losses = _train_step(model, make_batch(boxes_per_image=(0,)))
    assert all(torch.isfinite(v) for v in losses.values())


def test_teacher_frozen_eval_and_not_in_state_dict(tmp_path):
    model = build_model(kd_cfg(tmp_path, "FCOS"))
    model.train()
    assert model.training and model.student.training and not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    keys = model.state_dict().keys()
    assert not any(k.startswith("teacher.") for k in keys)
    assert any(k.startswith("student.") for k in keys) and any(
        k.startswith("distillers.") for k in keys
    )
    # loading a wrapper state dict back is clean: the teacher is not reported missing
    result = model.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_inference_runs_the_student_alone(tmp_path):
    model = build_model(kd_cfg(tmp_path, "RetinaNet")).eval()
    batch = make_batch()
    calls = []
    model.teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    for m in model.teacher.modules():
        m.register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(batch)
        ref = model.student(batch)
    assert not calls
    assert len(out) == len(ref) == 2
    for a, b in zip(out, ref):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def test_teacher_sees_student_inputs_and_captures(tmp_path):
    """Captured tensors: towers per level, anchors, same level shapes in teacher and student."""
    model = build_model(kd_cfg(tmp_path, "FCOS", student_fpn=32, teacher_fpn=64))
    s, t = _captured(model)
    assert s.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert set(s.towers) == {"cls", "reg"} and len(s.towers["cls"]) == 5
    # one block per tower conv (tiny configs: 1 conv); the last block is the tower output
    assert len(s.tower_blocks["cls"]) == 1 and s.tower_blocks["cls"][-1][0] is s.towers["cls"][0]
    assert s.towers["cls"][0].shape[1] == 32 and t.towers["cls"][0].shape[1] == 64
    assert [x.shape[-2:] for x in s.towers["reg"]] == [x.shape[-2:] for x in t.towers["reg"]]
    assert set(s.predictions) == {"cls_logits", "box_deltas", "ctrness"}
    assert len(s.anchors) == 5 and set(s.backbone) == {"res3", "res4", "res5"}
    assert not t.towers["cls"][0].requires_grad and s.towers["cls"][0].requires_grad


def test_rcnn_teacher_runs_on_student_sampled_proposals(tmp_path):
    model = build_model(kd_cfg(tmp_path, "GeneralizedRCNN"))
    s, t = _captured(model)
    num = sum(len(p) for p in s.proposals)
    assert s.roi["cls_logits"].shape == t.roi["cls_logits"].shape == (num, 4)
    assert s.proposals[0].has("gt_classes")
    assert len(s.rpn["objectness_logits"]) == len(t.rpn["objectness_logits"]) == 5


def test_plain_training_without_teacher(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=())
    model = build_model(cfg)
    assert model.teacher is None
    losses = _train_step(model, make_batch())
    assert not any(k.startswith("loss_kd_") for k in losses)


def test_warmup_scales_kd_losses(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("FitNet",))
    cfg.MODEL.KD.WARMUP_ITERS = 10
    model = build_model(cfg).train()
    batch = make_batch()
    values = []
    for it in (0, 4, 20):
        torch.manual_seed(0)
        with EventStorage(start_iter=it):
            values.append(model(batch)["loss_kd_fitnet"].item())
    # factors (it + 1) / 10 capped at 1: 0.1, 0.5, 1.0
    assert values[1] / values[0] == pytest.approx(5.0, rel=1e-4)
    assert values[2] / values[0] == pytest.approx(10.0, rel=1e-4)


def test_init_student_neck_and_head_from_teacher(tmp_path):
    cfg = kd_cfg(
        tmp_path, "FCOS", student_fpn=64, teacher_fpn=64, student_depth=18, teacher_depth=50
    )
    cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = True
    model = build_model(cfg)
    s, t = model.student.state_dict(), model.teacher.state_dict()
    assert torch.equal(s["head.cls_score.weight"], t["head.cls_score.weight"])
    assert torch.equal(s["backbone.fpn_output3.weight"], t["backbone.fpn_output3.weight"])
    # the lateral conv of res3 differs in input width (R18 128 vs R50 512 channels): not copied
    assert s["backbone.fpn_lateral3.weight"].shape != t["backbone.fpn_lateral3.weight"].shape
    assert not torch.equal(
        s["backbone.bottom_up.stem.conv1.weight"][:1], t["backbone.bottom_up.stem.conv1.weight"][:1]
    )


def test_plain_student_inherits_from_teacher_without_keeping_it(tmp_path):
    teacher = build_model(tiny_cfg("FCOS", 18, 64))
    path = str(tmp_path / "teacher.pth")
    torch.save({"model": teacher.state_dict()}, path)
    cfg = kd_cfg(tmp_path, "FCOS", student_fpn=64, distillers=(), teacher_weights=path)
    cfg.MODEL.KD.INIT_STUDENT_FROM_TEACHER = True
    model = build_model(cfg)
    assert model.teacher is None and len(model.distillers) == 0
    s, t = model.student.state_dict(), teacher.state_dict()
    # the trained teacher's neck and head, not a second random init of the teacher
    assert torch.equal(s["head.cls_score.weight"], t["head.cls_score.weight"])
    assert torch.equal(s["backbone.fpn_output3.weight"], t["backbone.fpn_output3.weight"])
    key = "backbone.bottom_up.stem.conv1.weight"
    assert not torch.equal(s[key], t[key])  # skipped prefix: the student's own init
    losses = _train_step(model, make_batch())
    assert losses and not any(k.startswith("loss_kd_") for k in losses)
    # without a teacher config the error names both users of the teacher
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = ""
    with pytest.raises(FileNotFoundError, match="INIT_STUDENT_FROM_TEACHER"):
        build_model(cfg)


# ------------------------------------------------------------------ errors before training
def test_missing_teacher_weights_file(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", teacher_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(cfg)


def test_empty_teacher_weights_rejected_by_default(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS")
    cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = True
    with pytest.raises(FileNotFoundError, match="TEACHER.WEIGHTS is empty"):
        build_model(cfg)


def test_missing_teacher_config(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS")
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = "no/such/teacher.yaml"
    with pytest.raises(FileNotFoundError, match="no/such/teacher.yaml"):
        build_model(cfg)


def test_class_count_mismatch(tmp_path):
    cfg = kd_cfg(tmp_path, "RetinaNet", num_classes=5)
    with pytest.raises(ValueError, match="Class-count mismatch.*5 classes.*3"):
        build_model(cfg)


def test_unknown_distiller_name(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("FitNet", "Fitnett"))
    with pytest.raises(KeyError, match=r"Fitnett.*Registered distillers: \[.*'FitNet'.*'LogitKD'"):
        build_model(cfg)


def test_missing_feature_levels(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("FitNet",))
    cfg.MODEL.KD.FITNET.IN_FEATURES = ["p2", "p3"]
    with pytest.raises(ValueError, match=r"FITNET.IN_FEATURES needs feature levels \['p2'\]"):
        build_model(cfg)


def test_wrong_teacher_weights_are_rejected(tmp_path):
    other = build_model(tiny_cfg("RetinaNet", 18, 64))
    path = tmp_path / "retina.pth"
    torch.save({"model": other.state_dict()}, path)
    cfg = kd_cfg(tmp_path, "FCOS", teacher_weights=str(path))
    with pytest.raises(ValueError, match="do not fit the teacher"):
        build_model(cfg)


def test_student_family_mismatch(tmp_path):
    cfg = kd_cfg(tmp_path, "RetinaNet")
    cfg.MODEL.META_ARCHITECTURE = "KDGeneralizedRCNN"
    with pytest.raises(TypeError, match="use KDDenseDetector"):
        build_model(cfg)


# ------------------------------------------------------------- what is captured, by value
def test_rcnn_teacher_logits_are_computed_on_the_student_sampled_proposals(tmp_path):
    """A teacher equal to the student (FrozenBN: same in train and eval mode) gives the same RoI
    logits as the student on each sampled proposal: it ran on those boxes, in that order."""
    cfg = kd_cfg(tmp_path, "GeneralizedRCNN", student_fpn=32, teacher_fpn=32)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    teacher_cfg = tiny_cfg("GeneralizedRCNN", 18, 32)
    teacher_cfg.MODEL.RESNETS.NORM = "FrozenBN"
    (tmp_path / "teacher.yaml").write_text(teacher_cfg.dump())
    model = build_model(cfg)
    model.teacher.load_state_dict(model.student.state_dict())
    s, t = _captured(model)
    assert len(s.roi["cls_logits"]) == sum(len(p) for p in s.proposals) > 0
    assert torch.allclose(t.roi["cls_logits"], s.roi["cls_logits"], atol=1e-5)
    assert torch.allclose(t.roi["box_deltas"], s.roi["box_deltas"], atol=1e-5)
    # and the comparison can fail: other proposals (the same boxes reversed) give other logits
    flipped = model.teacher.roi_heads.box_predictor(
        model.teacher.roi_heads.box_head(
            model.teacher.roi_heads.box_pooler(
                [t.features[f] for f in model.teacher.roi_heads.box_in_features],
                [p.proposal_boxes[torch.arange(len(p) - 1, -1, -1)] for p in s.proposals],
            )
        )
    )[0]
    assert not torch.allclose(flipped, s.roi["cls_logits"], atol=1e-5)


@pytest.mark.parametrize("arch", ["FCOS", "RetinaNet", "GFL"])
def test_tower_blocks_are_taken_after_each_activation(tmp_path, arch):
    """With 3 convs per tower (GN), block i is the output of the i-th conv -> GN -> ReLU."""
    cfg = kd_cfg(tmp_path, arch, student_fpn=64, teacher_fpn=64)
    for node in (cfg.MODEL.FCOS, cfg.MODEL.GFL, cfg.MODEL.RETINANET):
        node.NUM_CONVS = 3
        node.NORM = "GN"
    model = build_model(cfg)
    s, _ = _captured(model)
    for tower, path in (("cls", "cls_subnet"), ("reg", "bbox_subnet")):
        subnet = getattr(model.student.head, path)
        assert len(s.tower_blocks[tower]) == 3
        for level, feature in enumerate(s.level_features()):
            x = feature
            for block in range(3):
                x = subnet[3 * block : 3 * block + 3](x)  # conv, norm, activation
                assert isinstance(subnet[3 * block + 2], torch.nn.ReLU)
                assert torch.equal(s.tower_blocks[tower][block][level], x), (tower, block, level)
            assert torch.equal(s.towers[tower][level], x)


def test_teacher_input_is_channel_flipped_when_its_format_differs(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS")
    cfg.INPUT.FORMAT = "BGR"
    teacher_cfg = tiny_cfg("FCOS", 18, 64)
    teacher_cfg.INPUT.FORMAT = "RGB"
    teacher_cfg.MODEL.PIXEL_MEAN = [10.0, 20.0, 30.0]
    teacher_cfg.MODEL.PIXEL_STD = [2.0, 3.0, 4.0]
    (tmp_path / "teacher.yaml").write_text(teacher_cfg.dump())
    model = build_model(cfg)
    assert model.teacher_input_format == "RGB"
    batch = make_batch()
    s, t = _captured(model)
    image = batch[0]["image"]  # BGR, as the student reads it
    expected = (image.flip(0) - torch.tensor([10.0, 20.0, 30.0])[:, None, None]) / torch.tensor(
        [2.0, 3.0, 4.0]
    )[:, None, None]
    assert torch.allclose(t.images.tensor[0, :, :64, :64], expected, atol=1e-5)
    # the student keeps its own order
    s_expected = (image - model.student.pixel_mean.cpu()) / model.student.pixel_std.cpu()
    assert torch.allclose(s.images.tensor[0, :, :64, :64], s_expected, atol=1e-5)
