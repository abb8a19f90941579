"""The contract every registered distiller owes the user, checked for each detector family it
supports (and refused for the others), built through the yacs config path a user takes.

Iterates over ``KD_DISTILLER_REGISTRY``: a distiller registered later is checked with no test to
add. What a distiller declares (``supported_kinds``, ``supported_archs``, ``vanishing_terms``,
``level_key``, ``needs``) is held against what it does.
"""

import copy

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import kd_det2  # noqa: F401  (registers every distiller)
from kd_det2.engine import KDCheckpointer
from kd_det2.modeling.distillers import KD_DISTILLER_REGISTRY, registered_distillers
from kd_det2.modeling.distillers.base import KNOWN_NEEDS

FAMILIES = {"FCOS": "dense", "RetinaNet": "dense", "GFL": "dense", "GeneralizedRCNN": "rcnn"}
WRAPPER = {"dense": "KDDenseDetector", "rcnn": "KDGeneralizedRCNN"}
HEAD_KEYS = {"FCOS": "FCOS", "RetinaNet": "RETINANET", "GFL": "GFL"}
#: The stated autocast tolerance: from the same captured teacher and student tensors, a
#: distiller's losses under autocast equal its float32 losses within
#: |autocast - fp32| <= ATOL + RTOL * |fp32| (RTOL, ATOL per dtype; bf16 keeps 8 mantissa bits).
#: The whole model under autocast (what detectron2's AMP trainer runs) must give finite losses; its
#: values are not compared, since half-precision teachers may select other regions.
AUTOCAST_TOL = {torch.float16: (1e-2, 1e-4), torch.bfloat16: (5e-2, 1e-3)}
ZERO_ATOL = 1e-5  # what "zero" means for a vanishing term (float32 sums over a tiny model)


def supports(name: str, arch: str) -> bool:
    cls = KD_DISTILLER_REGISTRY.get(name)
    if FAMILIES[arch] not in cls.supported_kinds:
        return False
    return cls.supported_archs is None or arch in cls.supported_archs


SUPPORTED = [(n, a) for n in registered_distillers() for a in FAMILIES if supports(n, a)]
UNSUPPORTED = [(n, a) for n in registered_distillers() for a in FAMILIES if not supports(n, a)]


def _write(tmp_path, cfg, name):
    path = tmp_path / name
    path.write_text(cfg.dump())
    return str(path)


def contract_cfg(tmp_path, name, arch, identical=False, teacher_edit=None):
    """A KD config through the yacs path: a tiny student and a tiny teacher of family ``arch``.

    ``identical``: teacher config = student config, FrozenBN backbones and no BN anywhere, so a
    student copied into the teacher computes the same outputs in train and eval mode. Otherwise
    the teacher is wider (FPN 64 vs 32, GN towers) so that adapters are exercised.
    """
    student = tiny_cfg(arch, 18, 32)
    teacher = tiny_cfg(arch, 18, 32 if identical else 64)
    if identical:
        for c in (student, teacher):
            c.MODEL.RESNETS.NORM = "FrozenBN"
    if teacher_edit is not None:
        teacher_edit(teacher)
    cfg = student
    cfg.MODEL.META_ARCHITECTURE = WRAPPER[FAMILIES[arch]]
    cfg.MODEL.KD.STUDENT_META_ARCHITECTURE = arch
    cfg.MODEL.KD.DISTILLERS = [name]
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = _write(tmp_path, teacher, "teacher.yaml")
    cfg.MODEL.KD.TEACHER.REQUIRE_WEIGHTS = False
    return cfg


def kd_losses(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    return {k: v for k, v in losses.items() if k.startswith("loss_kd_")}


def captures(model, batch):
    """(teacher outputs, student outputs, GT) of one training step, as the wrapper's forward
    computes them (the teacher as the distillers' ``needs`` ask, :meth:`run_teacher`)."""
    model.train()
    gt = [x["instances"] for x in batch]
    with EventStorage():
        _, student = model.student_step(batch, gt)
        teacher = model.run_teacher(model.teacher_inputs(batch), student, gt)
    return teacher, student, gt


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name,arch", SUPPORTED)
def test_losses_gradients_teacher_autocast_and_checkpoint(tmp_path, name, arch):
    cls = KD_DISTILLER_REGISTRY.get(name)
    torch.manual_seed(0)
    model = build_model(contract_cfg(tmp_path, name, arch))
    teacher_before = _state(model.teacher)
    batch = make_batch(boxes_per_image=(3, 0))  # the second image has no GT box

    # finite, named loss_kd_*, at least one of them returned
    losses = kd_losses(model, batch)
    assert losses, f"{name} returned no loss_kd_* term"
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (key, value)
    # a batch where no image has a GT box
    for key, value in kd_losses(model, make_batch(boxes_per_image=(0,))).items():
        assert torch.isfinite(value), (key, value)

    # gradient reaches the student (or the distiller's adapters), never the teacher
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), name
    assert all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None), name

    # autocast (fp16, bf16): the whole model, as detectron2's AMP trainer runs it, gives finite
    # losses; the distiller computes the same values as in fp32 from the same captured tensors
    torch.manual_seed(1)
    t, s, gt = captures(model, batch)
    ref = {k: v.item() for k, v in model.distill(t, s, gt).items()}
    for dtype, (rtol, atol) in AUTOCAST_TOL.items():
        with torch.autocast("cpu", dtype=dtype):
            half = model.distill(t, s, gt)
            assert all(torch.isfinite(v) for v in kd_losses(model, batch).values()), dtype
        assert set(half) == set(ref)
        for key, value in half.items():
            diff = abs(value.float().item() - ref[key])
            assert diff <= atol + rtol * abs(ref[key]), (dtype, key, value, ref[key])

    # a few optimizer steps on the full loss: the teacher (parameters and buffers) never changes
    # (a small step: a random teacher gives huge KD losses)
    opt = torch.optim.SGD(trainable, lr=1e-6)
    for _ in range(2):
        model.train()
        with EventStorage():
            total = sum(model(batch).values())
        opt.zero_grad()
        total.backward()
        opt.step()
    after = model.teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training

    # checkpoint round trip: the distiller's state in, the teacher out
    KDCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=False)["model"]
    assert not any(k.startswith("teacher.") or ".teacher." in k for k in saved)
    distiller_state = {
        f"distillers.{name}.{k}": v for k, v in model.distillers[name].state_dict().items()
    }
    assert set(distiller_state) <= set(saved)
    fresh = build_model(contract_cfg(tmp_path, name, arch))
    KDCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
    for key, value in fresh.distillers[name].state_dict().items():
        assert torch.equal(value, distiller_state[f"distillers.{name}.{key}"]), key
    assert cls.needs <= KNOWN_NEEDS and model.distillers[name].needs <= cls.needs


@pytest.mark.parametrize("name,arch", SUPPORTED)
def test_declared_terms_vanish_for_a_teacher_equal_to_the_student(tmp_path, name, arch):
    cls = KD_DISTILLER_REGISTRY.get(name)
    assert cls.vanishing_terms, f"{name} declares no vanishing_terms"
    torch.manual_seed(0)
    model = build_model(contract_cfg(tmp_path, name, arch, identical=True))
    batch = make_batch(boxes_per_image=(3, 2))
    different = kd_losses(model, batch)  # random student, independently random teacher
    model.teacher.load_state_dict(model.student.state_dict())
    same = kd_losses(model, batch)
    present = [k for k in cls.vanishing_terms if k in same]
    assert present, f"{name} returned none of its vanishing_terms {cls.vanishing_terms}"
    for key in present:
        assert abs(same[key].item()) <= ZERO_ATOL, (key, same[key])
    # and the test can fail: with a different teacher the terms measure something
    assert any(abs(different[k].item()) > 10 * ZERO_ATOL for k in present), different


@pytest.mark.parametrize("name,arch", UNSUPPORTED)
def test_unsupported_family_is_refused_at_build_time(tmp_path, name, arch):
    with pytest.raises((ValueError, TypeError), match=name):
        build_model(contract_cfg(tmp_path, name, arch))


def _fewer_head_levels(arch):
    key = HEAD_KEYS[arch]

    def edit(teacher):
        teacher.MODEL[key].IN_FEATURES = ["p3", "p4", "p5", "p6"]
        if arch == "RetinaNet":
            teacher.MODEL.ANCHOR_GENERATOR.SIZES = copy.deepcopy(
                teacher.MODEL.ANCHOR_GENERATOR.SIZES[:4]
            )

    return edit


def _level_cases():
    for name, arch in SUPPORTED:
        cls = KD_DISTILLER_REGISTRY.get(name)
        if cls.level_key is not None or FAMILIES[arch] == "dense":
            yield name, arch


@pytest.mark.parametrize("name,arch", list(_level_cases()))
def test_missing_feature_level_is_refused_at_build_time(tmp_path, name, arch):
    """A level named in the distiller's level key that no model has, or (distillers that read
    the heads' levels) a teacher whose head reads one level fewer than the student's."""
    cls = KD_DISTILLER_REGISTRY.get(name)
    if cls.level_key is not None:
        cfg = contract_cfg(tmp_path, name, arch)
        cfg.merge_from_list([cls.level_key, "['p9']"])
    else:
        cfg = contract_cfg(tmp_path, name, arch, teacher_edit=_fewer_head_levels(arch))
    with pytest.raises(ValueError, match=name):
        build_model(cfg)
