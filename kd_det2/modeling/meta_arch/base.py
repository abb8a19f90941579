"""Common part of the KD meta-architectures: a student, a frozen teacher and distillers."""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ..distillers import Distiller, build_distillers
from ..distillers.base import distiller_needs
from ..outputs import DetectorOutputs, ModelSpec
from ..stages import bottom_up
from ..teacher import build_teacher, freeze

__all__ = ["KDMetaArchBase", "TEACHER_PREFIX"]

logger = logging.getLogger(__name__)

#: state_dict prefix of the teacher inside a KD wrapper; never saved in checkpoints.
TEACHER_PREFIX = "teacher."
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _drop_teacher_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + TEACHER_PREFIX)]:
        del state_dict[key]
    return state_dict


def _ignore_missing_teacher_keys(module, incompatible_keys):
    missing = incompatible_keys.missing_keys
    missing[:] = [
        k for k in missing if not (k.startswith(TEACHER_PREFIX) or "." + TEACHER_PREFIX in k)
    ]


class KDMetaArchBase(nn.Module):
    """A student detector trained with a frozen teacher and a set of distillers.

    * ``self.student``: a vanilla detectron2 detector; inference runs it alone.
    * ``self.teacher``: frozen (no grad, always in eval mode), left out of the optimizer (no
      trainable parameters) and out of ``state_dict()``, hence of every checkpoint.
    * ``self.distillers``: ``nn.ModuleDict`` of :class:`Distiller`; their adapters train with the
      student and are saved in checkpoints.

    Subclasses implement :meth:`describe`, :meth:`student_step` and :meth:`teacher_step` for one
    detector family.
    """

    #: "dense" or "rcnn"
    kind: str = ""

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        distillers: Optional[Dict[str, Distiller]] = None,
        warmup_iters: int = 0,
        student_input_format: str = "BGR",
        teacher_input_format: str = "BGR",
        grad_stats_period: int = 0,
    ):
        """
        Args:
            student: detector to train.
            teacher: frozen detector; required when ``distillers`` is not empty.
            distillers: name -> distiller; empty for plain training of the student.
            warmup_iters: KD losses are scaled by min(1, (iter + 1) / warmup_iters).
            student_input_format, teacher_input_format: "BGR" or "RGB"; the teacher's input is
                channel-flipped when they differ.
            grad_stats_period: every this many iterations (0: never), log the norms of the
                gradients of the detection and KD losses on the student's parameters both reach,
                and their ratio (see :meth:`put_grad_stats`).
        """
        super().__init__()
        self.student = student
        self.distillers = nn.ModuleDict(distillers or {})
        if len(self.distillers) and teacher is None:
            raise ValueError(
                f"Distillers {list(self.distillers)} need a teacher: set MODEL.KD.TEACHER.*"
            )
        self.teacher = freeze(teacher) if teacher is not None else None
        self.needs = distiller_needs(self.distillers.values())
        self.warmup_iters = int(warmup_iters)
        self.grad_stats_period = int(grad_stats_period)
        self.student_input_format = student_input_format
        self.teacher_input_format = teacher_input_format
        self.student_spec = self.describe(student, student_input_format)
        if teacher is not None:
            self.teacher_spec = self.describe(teacher, teacher_input_format)
            self.check_compatible(self.student_spec, self.teacher_spec)
        self._register_state_dict_hook(_drop_teacher_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_teacher_keys)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def build_student(cls, cfg) -> nn.Module:
        """Build the student from ``cfg`` with ``MODEL.KD.STUDENT_META_ARCHITECTURE``."""
        name = cfg.MODEL.KD.STUDENT_META_ARCHITECTURE
        if name not in META_ARCH_REGISTRY or name.startswith("KD"):
            raise KeyError(
                f"MODEL.KD.STUDENT_META_ARCHITECTURE '{name}' is not a plain detector in "
                f"META_ARCH_REGISTRY: {sorted(k for k, _ in META_ARCH_REGISTRY if k[:2] != 'KD')}"
            )
        return META_ARCH_REGISTRY.get(name)(cfg)

    @classmethod
    def from_config(cls, cfg) -> dict:
        """Arguments of ``__init__`` from a yacs config (``MODEL.KD.*`` and the student's keys)."""
        kd = cfg.MODEL.KD
        student = cls.build_student(cfg)
        names = list(kd.DISTILLERS)
        teacher, t_format = None, "BGR"
        if names or kd.INIT_STUDENT_FROM_TEACHER:
            teacher, t_format = build_teacher(
                kd.TEACHER.CONFIG_FILE,
                kd.TEACHER.WEIGHTS,
                kd.TEACHER.OPTS,
                require_weights=kd.TEACHER.REQUIRE_WEIGHTS,
                base_dir=_REPO_ROOT,
            )
        distillers = {}
        if names:
            s_spec = cls.describe(student, cfg.INPUT.FORMAT)
            t_spec = cls.describe(teacher, t_format)
            cls.check_compatible(s_spec, t_spec)
            distillers = build_distillers(cfg, names, s_spec, t_spec)
        if kd.INIT_STUDENT_FROM_TEACHER:
            init_student_from_teacher(student, teacher, kd.INIT_STUDENT_SKIP)
            if not names:
                # Plain training with the teacher's initialisation (the baseline of an inherited
                # distillation): the teacher is not needed after the copy.
                teacher, t_format = None, "BGR"
        return {
            "student": student,
            "teacher": teacher,
            "distillers": distillers,
            "warmup_iters": kd.WARMUP_ITERS,
            "student_input_format": cfg.INPUT.FORMAT,
            "teacher_input_format": t_format,
            "grad_stats_period": kd.GRAD_STATS_PERIOD,
        }

    @staticmethod
    def check_compatible(student: ModelSpec, teacher: ModelSpec) -> None:
        """Raise a ValueError when teacher and student cannot be distilled into one another."""
        if student.num_classes != teacher.num_classes:
            raise ValueError(
                f"Class-count mismatch: the teacher ({teacher.arch}) predicts "
                f"{teacher.num_classes} classes, the student ({student.arch}) "
                f"{student.num_classes}. Train or configure the teacher on the student's dataset "
                "(MODEL.KD.TEACHER.OPTS can override the teacher's NUM_CLASSES)."
            )
        if student.kind != teacher.kind:
            raise ValueError(
                f"Teacher {teacher.arch} is a {teacher.kind} detector and student {student.arch} "
                f"a {student.kind} one; this wrapper distils within one family."
            )

    @classmethod
    def describe(cls, model: nn.Module, input_format: str) -> ModelSpec:
        """Static :class:`ModelSpec` of a detector of this wrapper's family."""
        raise NotImplementedError  # abstract

    @staticmethod
    def backbone_shapes(model: nn.Module) -> Tuple[Dict[str, ShapeSpec], Dict[str, ShapeSpec]]:
        """(bottom-up stage shapes, neck output shapes) of a detector's backbone."""
        return dict(bottom_up(model).output_shape()), dict(model.backbone.output_shape())

    # ---------------------------------------------------------------------------- training
    @property
    def device(self) -> torch.device:
        return self.student.device

    def train(self, mode: bool = True) -> "KDMetaArchBase":
        """Switch student and distillers; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_step(
        self, batched_inputs: List[dict], gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], DetectorOutputs]:
        """Student forward: (its own detection losses, its captured tensors)."""
        raise NotImplementedError  # abstract

    def teacher_step(
        self,
        batched_inputs: List[dict],
        student: DetectorOutputs,
        gt_instances: Optional[List[Instances]] = None,
        leaf_features: bool = False,
    ) -> DetectorOutputs:
        """Teacher forward on the student's inputs (see :meth:`run_teacher` for how it is called).

        Args:
            leaf_features: make the neck outputs leaf tensors that require grad (the backbone
                runs without a graph).
            gt_instances: given when a distiller needs ``"teacher_losses"`` (called with grad
                enabled): also return the teacher's detection losses against them,
                differentiable with respect to the neck outputs only, which are then leaves
                whatever ``leaf_features`` says (see :class:`DetectorOutputs`).
        """
        raise NotImplementedError  # abstract

    def run_teacher(
        self, inputs: List[dict], student: DetectorOutputs, gt_instances: List[Instances]
    ) -> DetectorOutputs:
        """The teacher's step as the distillers' ``needs`` ask for it, and no more: without a
        graph by default; with its neck outputs as leaves for ``"teacher_leaves"``; with grad
        enabled and its GT losses for ``"teacher_losses"``."""
        if "teacher_losses" in self.needs:
            with torch.enable_grad():
                return self.teacher_step(inputs, student, gt_instances, leaf_features=True)
        with torch.no_grad():
            return self.teacher_step(inputs, student, leaf_features="teacher_leaves" in self.needs)

    def forward(self, batched_inputs: List[dict]):
        """Training: student losses + ``loss_kd_*``. Inference: the student's outputs."""
        if not self.training:
            return self.student(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        losses, student_out = self.student_step(batched_inputs, gt_instances)
        if len(self.distillers):
            inputs = self.teacher_inputs(batched_inputs)
            teacher_out = self.run_teacher(inputs, student_out, gt_instances)
            kd_losses = self.distill(teacher_out, student_out, gt_instances)
            self.put_grad_stats(losses, kd_losses)
            losses.update(kd_losses)
        return losses

    def put_grad_stats(self, det_losses: Dict[str, Tensor], kd_losses: Dict[str, Tensor]) -> None:
        """Every ``grad_stats_period`` iterations, put into the event storage the gradient norms
        of the detection losses (``kd_grad/det_norm``) and of the KD losses
        (``kd_grad/kd_norm``) over the student parameters that both reach (the shared ones), their
        ratio ``kd_grad/ratio``, and ``kd_grad/ratio/<loss name>`` for each KD loss.

        Costs one backward per loss (plus two) in those iterations only. Single-process only:
        skipped under distributed training.
        """
        period = self.grad_stats_period
        if period <= 0 or not kd_losses or comm.get_world_size() > 1:
            return
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        if storage.iter % period:
            return
        params = [p for p in self.student.parameters() if p.requires_grad]

        def grads(loss: Tensor) -> List[Optional[Tensor]]:
            if not loss.requires_grad:
                return [None] * len(params)
            return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))

        def norm(gs: List[Optional[Tensor]], keep: List[bool]) -> float:
            sq = [g.float().pow(2).sum() for g, k in zip(gs, keep) if k and g is not None]
            return float(torch.stack(sq).sum().sqrt()) if sq else 0.0

        g_det = grads(sum(det_losses.values()))
        g_kd = grads(sum(kd_losses.values()))
        shared = [a is not None and b is not None for a, b in zip(g_det, g_kd)]
        det_norm, kd_norm = norm(g_det, shared), norm(g_kd, shared)
        storage.put_scalar("kd_grad/det_norm", det_norm, smoothing_hint=False)
        storage.put_scalar("kd_grad/kd_norm", kd_norm, smoothing_hint=False)
        if det_norm > 0:
            storage.put_scalar("kd_grad/ratio", kd_norm / det_norm, smoothing_hint=False)
            for name, value in kd_losses.items():
                ratio = norm(grads(value), shared) / det_norm
                storage.put_scalar(f"kd_grad/ratio/{name}", ratio, smoothing_hint=False)

    def teacher_inputs(self, batched_inputs: List[dict]) -> List[dict]:
        """The student's inputs, channel-flipped when the teacher expects the other order."""
        if self.teacher_input_format == self.student_input_format:
            return batched_inputs
        return [{**x, "image": x["image"].flip(0)} for x in batched_inputs]

    def warmup_factor(self) -> float:
        if self.warmup_iters <= 0:
            return 1.0
        try:
            it = get_event_storage().iter
        except AssertionError:  # outside a trainer: no event storage
            return 1.0
        return min(1.0, (it + 1) / self.warmup_iters)

    def distill(
        self, teacher: DetectorOutputs, student: DetectorOutputs, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """Run every distiller; losses are scaled by the warm-up factor."""
        factor = self.warmup_factor()
        out: Dict[str, Tensor] = {}
        for name, distiller in self.distillers.items():
            for key, value in distiller(teacher, student, gt_instances).items():
                if not key.startswith("loss_kd_") or key in out:
                    raise KeyError(f"Distiller {name} returned a bad or repeated loss name {key}")
                out[key] = value * factor
        return out


def init_student_from_teacher(student: nn.Module, teacher: nn.Module, skip: Sequence[str]) -> None:
    """Copy teacher tensors into the student where names and shapes match.

    Tensors whose names start with a prefix in ``skip`` are left alone (by default the bottom-up
    backbone, i.e. only the neck and the head are initialised from the teacher).
    """
    t_state, s_state = teacher.state_dict(), student.state_dict()
    skip = tuple(skip)
    copy = {
        k: t_state[k]
        for k, v in s_state.items()
        if not k.startswith(skip) and k in t_state and t_state[k].shape == v.shape
    }
    # Load the student's own full state dict with the copied tensors in: its metadata (module
    # versions) stays, so FrozenBatchNorm2d does not reset the statistics of modules absent from a
    # partial dict (it does so for dicts without versions, e.g. pretrained bottom-up networks).
    s_state.update(copy)
    student.load_state_dict(s_state)
    left = [k for k in s_state if not k.startswith(skip) and k not in copy]
    logger.info(
        f"Initialised {len(copy)} student tensors from the teacher; {len(left)} outside "
        f"{list(skip)} kept their init (name or shape differs), e.g. {left[:5]}"
    )
