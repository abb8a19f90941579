"""What the KD wrappers give every distiller: the student's losses, label assignment and detection
loss function, the teacher's losses when a distiller declares ``needs = {"teacher_losses"}`` (and
only then), and the gradient-ratio diagnostics."""

import math

import pytest
import torch
from conftest import kd_cfg, make_batch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from kd_det2.modeling.distillers import KD_DISTILLER_REGISTRY, Distiller
from kd_det2.modeling.meta_arch.dense import assignment_from_matches


class _Probe(Distiller):
    """Records what it receives; returns a loss that depends on the student's neck features."""

    seen = []

    def __init__(self, cfg, student, teacher):
        super().__init__()

    def forward(self, teacher, student, gt_instances):
        _Probe.seen.append((teacher, student))
        value = sum(x.float().mean() for x in student.features.values()) * 0
        return {f"loss_kd_{type(self).__name__.lower()}": value}


class _NeedsTeacherLosses(_Probe):
    needs = frozenset({"teacher_losses"})


class _NeedsTeacherLeaves(_Probe):
    needs = frozenset({"teacher_leaves"})


@pytest.fixture
def probes():
    """Register the probe distillers for one test only (the registry is global)."""
    for cls in (_Probe, _NeedsTeacherLosses, _NeedsTeacherLeaves):
        KD_DISTILLER_REGISTRY.register(cls)
    _Probe.seen.clear()
    yield
    for cls in (_Probe, _NeedsTeacherLosses, _NeedsTeacherLeaves):
        KD_DISTILLER_REGISTRY._obj_map.pop(cls.__name__)


def _step(model, batch):
    model.train()
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


@pytest.mark.parametrize("arch", ["FCOS", "GeneralizedRCNN"])
def test_teacher_losses_only_when_declared(tmp_path, probes, arch):
    batch = make_batch(boxes_per_image=(3, 1))
    plain = build_model(kd_cfg(tmp_path, arch, distillers=("_Probe",)))
    _step(plain, batch)
    teacher, student = _Probe.seen[-1]
    assert plain.needs == frozenset() and teacher.losses == {}
    assert not any(f.requires_grad for f in teacher.features.values())
    assert student.losses and all(v.requires_grad for v in student.losses.values())

    model = build_model(kd_cfg(tmp_path, arch, distillers=("_Probe", "_NeedsTeacherLosses")))
    assert model.needs == {"teacher_losses"}
    losses, _ = _step(model, batch)
    teacher, student = _Probe.seen[-1]
    assert teacher.losses and all(torch.isfinite(v) for v in teacher.losses.values())
    assert set(teacher.losses) == set(student.losses)  # the same kind of detection losses
    feats = list(teacher.features.values())
    assert all(f.is_leaf and f.requires_grad for f in feats)  # the backbone ran without a graph
    assert not any(x.requires_grad for x in teacher.backbone.values())
    grads = torch.autograd.grad(sum(teacher.losses.values()), feats, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # other captures are detached; the teacher's parameters never get a gradient
    assert not any(x.requires_grad for v in teacher.predictions.values() for x in v)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize("arch", ["FCOS", "GeneralizedRCNN"])
def test_teacher_leaves_without_losses(tmp_path, probes, arch):
    """``"teacher_leaves"``: neck outputs as leaves that require grad, no GT losses, no graph on
    the other captures; the distiller's own losses through ``detection_loss_fn`` reach the
    leaves and never the teacher's parameters."""
    batch = make_batch(boxes_per_image=(3, 1))
    model = build_model(kd_cfg(tmp_path, arch, distillers=("_NeedsTeacherLeaves",)))
    assert model.needs == {"teacher_leaves"}
    _step(model, batch)
    teacher, _ = _Probe.seen[-1]
    assert teacher.losses == {}
    feats = list(teacher.features.values())
    assert all(f.is_leaf and f.requires_grad for f in feats)
    assert not any(x.requires_grad for x in teacher.backbone.values())
    assert not any(x.requires_grad for v in teacher.predictions.values() for x in v)
    assert not any(x.requires_grad for x in teacher.roi.values())
    gt = [x["instances"] for x in batch]
    with EventStorage():
        losses = teacher.detection_loss_fn(teacher.features, gt)
    grads = torch.autograd.grad(sum(losses.values()), feats, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_student_detection_loss_fn_reproduces_its_losses(tmp_path, probes):
    model = build_model(kd_cfg(tmp_path, "FCOS", distillers=("_Probe",)))
    batch = make_batch(boxes_per_image=(3, 1))
    _step(model, batch)
    _, student = _Probe.seen[-1]
    gt = [x["instances"] for x in batch]
    empty = [
        Instances(x.image_size, gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
        for x in gt
    ]
    normalizer = model.student.loss_normalizer
    with EventStorage():  # detection losses may put statistics
        again = student.detection_loss_fn(student.features, gt)
        twice = student.detection_loss_fn(student.features, gt)
        other = student.detection_loss_fn(student.features, empty)
    assert model.student.loss_normalizer == normalizer  # the detector's state is left alone
    assert set(again) == set(student.losses) == set(twice)
    # the same losses up to detectron2's moving-average normaliser (one factor for every term)
    ratios = [again[k] / student.losses[k] for k in again]
    assert all(torch.allclose(r, ratios[0], rtol=1e-5) for r in ratios)
    assert all(torch.equal(again[k], twice[k]) for k in again)
    # other targets give other losses, differentiable with respect to the features
    assert not torch.allclose(other["loss_fcos_cls"], student.losses["loss_fcos_cls"])
    grads = torch.autograd.grad(sum(other.values()), list(student.features.values()))
    assert all(g is not None for g in grads)


def test_rcnn_detection_loss_fn_has_rpn_and_roi_losses(tmp_path, probes):
    model = build_model(kd_cfg(tmp_path, "GeneralizedRCNN", distillers=("_NeedsTeacherLosses",)))
    batch = make_batch(boxes_per_image=(3, 1))
    _step(model, batch)
    teacher, student = _Probe.seen[-1]
    gt = [x["instances"] for x in batch]
    with EventStorage():  # the RPN losses put statistics
        losses = student.detection_loss_fn(student.features, gt)
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} == set(losses)
    # the RoI classification loss on the student's sampled proposals equals the student's own
    assert torch.allclose(losses["loss_cls"], student.losses["loss_cls"], rtol=1e-5)
    assert set(teacher.losses) == set(losses)
    # the student's RPN anchor sampling is recorded (the teacher's RPN loss is taken on it)
    labels, boxes = student.rpn_assignment
    assert len(labels) == len(boxes) == 2 and labels[0].shape[0] == boxes[0].shape[0]
    assert set(torch.cat(labels).unique().tolist()) <= {-1, 0, 1}


@pytest.mark.parametrize("arch", ["FCOS", "RetinaNet", "GFL"])
def test_student_assignment_is_the_detector_own(tmp_path, probes, arch):
    model = build_model(kd_cfg(tmp_path, arch, distillers=("_Probe",)))
    batch = make_batch(boxes_per_image=(3, 0))
    _step(model, batch)
    _, student = _Probe.seen[-1]
    gt = [x["instances"] for x in batch]
    labels, boxes = model.student.label_anchors(student.anchors, gt)
    labels = torch.stack(list(labels)) if isinstance(labels, (list, tuple)) else labels
    boxes = torch.stack(list(boxes)) if isinstance(boxes, (list, tuple)) else boxes
    a = student.assignment
    r = sum(len(x) for x in student.anchors)
    assert a["gt_labels"].shape == a["gt_index"].shape == (2, r)
    assert torch.equal(a["gt_labels"], labels)
    k = model.student.num_classes
    fg = (labels >= 0) & (labels < k)
    assert fg[0].any() and not fg[1].any()  # the second image has no GT
    assert torch.equal(a["gt_index"] >= 0, fg)
    idx = a["gt_index"][0][fg[0]]
    assert torch.equal(gt[0].gt_boxes.tensor[idx], boxes[0][fg[0]])
    assert torch.equal(gt[0].gt_classes[idx], labels[0][fg[0]])


def test_assignment_from_matches_by_hand():
    gt = Instances((10, 10))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0, 4, 4], [5, 5, 9, 9], [0, 0, 4, 4]]))
    gt.gt_classes = torch.tensor([1, 0, 2])
    labels = torch.tensor([[1, 3, 0, -1, 1]])  # K = 3: background 3, ignored -1
    boxes = torch.tensor([[[0.0, 0, 4, 4], [1, 1, 2, 2], [5, 5, 9, 9], [0, 0, 4, 4], [0, 0, 4, 4]]])
    out = assignment_from_matches(labels, boxes, [gt], num_classes=3)
    # identical GT boxes 0 and 2: the first one; background and ignored anchors: -1
    assert out["gt_index"].tolist() == [[0, -1, 1, -1, 0]]


def test_grad_stats_are_logged_with_the_ratio_of_norms(tmp_path):
    cfg = kd_cfg(tmp_path, "FCOS", distillers=("FitNet", "LogitKD"))
    cfg.MODEL.KD.GRAD_STATS_PERIOD = 2
    model = build_model(cfg)
    batch = make_batch(boxes_per_image=(3, 1))
    losses, storage = _step(model, batch)  # iteration 0: logged
    hist = storage.histories()
    det, kd = hist["kd_grad/det_norm"].latest(), hist["kd_grad/kd_norm"].latest()
    assert det > 0 and kd > 0
    assert hist["kd_grad/ratio"].latest() == pytest.approx(kd / det)
    assert {"kd_grad/ratio/loss_kd_fitnet", "kd_grad/ratio/loss_kd_logit"} <= set(hist)
    # by hand: the norm of the detection gradient over the parameters both losses reach
    params = [p for p in model.student.parameters() if p.requires_grad]
    det_loss = sum(v for k, v in losses.items() if not k.startswith("loss_kd_"))
    kd_loss = sum(v for k, v in losses.items() if k.startswith("loss_kd_"))
    g_det = torch.autograd.grad(det_loss, params, retain_graph=True, allow_unused=True)
    g_kd = torch.autograd.grad(kd_loss, params, allow_unused=True)
    shared = [a for a, b in zip(g_det, g_kd) if a is not None and b is not None]
    assert len(shared) < len(params)  # FitNet and LogitKD reach the FPN and head, not everything
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in shared))
    assert det == pytest.approx(expected, rel=1e-4)
    model.train()
    with EventStorage(start_iter=1) as storage:  # iteration 1: not logged
        model(batch)
    assert "kd_grad/ratio" not in storage.histories()
