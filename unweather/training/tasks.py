"""Training stages as task modules: each returns a dict of named, weighted losses for one batch.

The loop (`trainer.py`) stays generic: it sums the dict, steps the optimizer over `task.trainable`,
and never knows which stage it runs. Teachers are frozen, run under `no_grad` where no gradient needs
to flow through them, and are never part of `trainable`; the CKT projectors train with the student in
one module (`StudentWithCKT`) and are saved separately.

Contrastive feature spaces (`--mcr`): `vgg19` (the paper: a frozen ImageNet VGG19, levels weighted
1/32..1), `teacher` (our deviation, no download: each weather's samples are measured in the encoder taps
of that weather's frozen teacher, levels weighted 1/8..1, and the per-weather ratios averaged), `none`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unweather.training import losses
from unweather.training.config import LossConfig
from unweather.training.data import FloatBatch


def freeze(net: nn.Module) -> nn.Module:
    """Put `net` in eval mode with every parameter frozen; return it."""
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class StudentWithCKT(nn.Module):
    """The student and its CKT projectors: the one module the student stages optimise and checkpoint."""

    def __init__(self, student: nn.Module, ckt: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.ckt = ckt


class Task(nn.Module):
    """A stage: `trainable` is optimised, `net` is validated and exported, `forward` returns losses."""

    name = "task"

    def __init__(self, loss: LossConfig) -> None:
        super().__init__()
        self.loss = loss
        self.frozen = nn.ModuleList()

    @property
    def trainable(self) -> nn.Module:
        raise NotImplementedError

    @property
    def net(self) -> nn.Module:
        raise NotImplementedError

    def train(self, mode: bool = True) -> Task:
        super().train(mode)
        # Frozen networks stay in eval mode whatever the loop asks (no batch-statistics drift).
        for module in self.frozen:
            module.eval()
        return self

    def pixel(self, output: torch.Tensor, target: torch.Tensor, batch: FloatBatch) -> torch.Tensor:
        """The pixel term: plain L1, or per-weather balanced L1 (`loss.pixel_balance == "input"`)."""
        if self.loss.pixel_balance == "input":
            return losses.balanced_l1(output, target, batch.inputs, batch.groups, reference=batch.targets)
        return losses.l1(output, target)

    def forward(self, batch: FloatBatch, step: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class TeacherTask(Task):
    """One weather's teacher: L1 between its output and the ground truth."""

    name = "teacher"

    def __init__(self, net: nn.Module, loss: LossConfig) -> None:
        super().__init__(loss)
        self.teacher = net

    @property
    def trainable(self) -> nn.Module:
        return self.teacher

    @property
    def net(self) -> nn.Module:
        return self.teacher

    def forward(self, batch: FloatBatch, step: int = 0) -> dict[str, torch.Tensor]:
        return {"pixel": self.loss.pixel * self.pixel(self.teacher(batch.inputs), batch.targets, batch)}


class DirectTask(Task):
    """The baseline: the student trained directly on the mixed data, plain pixel loss, no teachers."""

    name = "direct"

    def __init__(self, body: StudentWithCKT, loss: LossConfig) -> None:
        super().__init__(loss)
        self.body = body

    @property
    def trainable(self) -> nn.Module:
        return self.body

    @property
    def net(self) -> nn.Module:
        return self.body.student

    def forward(self, batch: FloatBatch, step: int = 0) -> dict[str, torch.Tensor]:
        out = self.body.student(batch.inputs)
        return {"pixel": self.loss.pixel * self.pixel(out, batch.targets, batch)}


class _TeacherFeatures:
    """Teacher k's encoder taps as a feature function (gradient flows to the input, not the teacher)."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.teacher(x, return_feat=True)[1])


class _StudentStage(Task):
    """Shared by KC and KE: the student body, the frozen teachers, the contrastive feature network."""

    def __init__(self, body: StudentWithCKT, teachers: Sequence[tuple[str, nn.Module]], loss: LossConfig,
                 features: nn.Module | None = None) -> None:
        super().__init__(loss)
        self.body = body
        self.weathers = [name for name, _ in teachers]
        self.teachers = nn.ModuleList(freeze(t) for _, t in teachers)
        self.frozen.extend(self.teachers)
        if loss.mcr == "vgg19":
            if features is None:
                raise ValueError("mcr vgg19 needs the VGG19 feature network")
            self.features = freeze(features)
            self.frozen.append(self.features)
        else:
            self.features = None

    @property
    def trainable(self) -> nn.Module:
        return self.body

    @property
    def net(self) -> nn.Module:
        return self.body.student

    def _check_groups(self, batch: FloatBatch) -> list[tuple[str, int, int]]:
        groups = batch.weather_groups()
        if [g[0] for g in groups] != self.weathers:
            raise ValueError(f"batch groups {[g[0] for g in groups]} do not match the teachers {self.weathers}")
        return groups

    def _weights(self) -> tuple[float, ...]:
        return losses.VGG_WEIGHTS if self.loss.mcr == "vgg19" else losses.TAP_WEIGHTS

    def _mcr_scale(self, weight: float, step: int) -> float:
        """The contrastive term's weight at `step`: 0 when off, `weight * k` on every k-th step.

        With `loss.mcr_every = k > 1` the term is computed on one step in k with k times its weight:
        the same expected gradient at a fraction of its cost (it dominates a CPU step).
        """
        if self.loss.mcr == "none" or not weight:
            return 0.0
        every = max(1, int(self.loss.mcr_every))
        return weight * every if step % every == 0 else 0.0


class KCTask(_StudentStage):
    """Stage 1, knowledge collation: T-pixel + PFE + PFV + SCR (weights from `LossConfig`).

    Teacher k sees only the inputs of weather k; the student sees the whole batch. Clean pairs (if any)
    are matched to their ground truth in the pixel term and take no part in CKT or SCR.
    """

    name = "kc"

    def forward(self, batch: FloatBatch, step: int = 0) -> dict[str, torch.Tensor]:
        groups = self._check_groups(batch)
        stop = batch.weather_stop
        teacher_out, teacher_taps = [], []
        with torch.no_grad():
            for teacher, (_, a, b) in zip(self.teachers, groups, strict=True):
                out_k, taps_k = teacher(batch.inputs[a:b], return_feat=True)
                teacher_out.append(out_k)
                teacher_taps.append([t.detach() for t in taps_k])
        target = torch.cat([*teacher_out, batch.targets[stop:]])
        out, student_taps = self.body.student(batch.inputs, return_feat=True)
        result = {"pixel": self.loss.pixel * self.pixel(out, target, batch)}

        pairs = self.body.ckt([t[:stop] for t in student_taps], teacher_taps)
        pfe = sum(losses.l1(p["student"], p["teacher"]) for p in pairs)
        pfv = sum(losses.l1(p["recon"], p["feat"]) for p in pairs)
        result["pfe"] = self.loss.pfe * pfe
        result["pfv"] = self.loss.pfv * pfv

        scale = self._mcr_scale(self.loss.scr, step)
        if scale:
            positive = target[:stop] if self.loss.scr_positive == "teacher" else batch.targets[:stop]
            result["scr"] = scale * self._scr(out[:stop], positive, batch.inputs[:stop], groups, teacher_taps)
        elif self.loss.mcr != "none" and self.loss.scr:
            result["scr"] = out.new_zeros(())
        return result

    def _scr(self, anchor: torch.Tensor, positive: torch.Tensor, degraded: torch.Tensor,
             groups: list[tuple[str, int, int]], teacher_taps: list[list[torch.Tensor]]) -> torch.Tensor:
        weights = self._weights()
        if self.features is not None:
            return losses.scr(self.features, anchor, positive, degraded, weights)
        total, n = anchor.new_zeros(()), anchor.shape[0]
        for teacher, taps, (_, a, b) in zip(self.teachers, teacher_taps, groups, strict=True):
            f = _TeacherFeatures(teacher)
            with torch.no_grad():
                fp = f(positive[a:b])
            # The teacher's taps of its own inputs are the negatives' features, already computed.
            total = total + losses.contrastive(f(anchor[a:b]), fp, taps, weights) * ((b - a) / n)
        return total


class KETask(_StudentStage):
    """Stage 2, knowledge examination: G-pixel + HCR; CKT is dropped (teachers kept only for `--mcr teacher`).

    HCR's anchors are the student's outputs on degraded samples, its positives their ground truths, its
    negatives every degraded input of the batch, of every weather type.
    """

    name = "ke"

    def forward(self, batch: FloatBatch, step: int = 0) -> dict[str, torch.Tensor]:
        groups = self._check_groups(batch)
        stop = batch.weather_stop
        out = self.body.student(batch.inputs)
        result = {"pixel": self.loss.pixel * self.pixel(out, batch.targets, batch)}
        scale = self._mcr_scale(self.loss.hcr, step)
        if scale:
            result["hcr"] = scale * self._hcr(out[:stop], batch.targets[:stop], batch.inputs[:stop], groups)
        elif self.loss.mcr != "none" and self.loss.hcr:
            result["hcr"] = out.new_zeros(())
        return result

    def _hcr(self, anchor: torch.Tensor, target: torch.Tensor, degraded: torch.Tensor,
             groups: list[tuple[str, int, int]]) -> torch.Tensor:
        weights = self._weights()
        if self.features is not None:
            return losses.hcr(self.features, anchor, target, degraded, weights)
        total, n = anchor.new_zeros(()), anchor.shape[0]
        for teacher, (_, a, b) in zip(self.teachers, groups, strict=True):
            f = _TeacherFeatures(teacher)
            total = total + losses.hcr(f, anchor[a:b], target[a:b], degraded, weights) * ((b - a) / n)
        return total
