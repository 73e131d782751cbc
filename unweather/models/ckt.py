"""Collaborative knowledge transfer (CKT): projectors that bring teachers and student together.

At each feature tap l (channels c_l in the teachers, hidden h_l = c_l // 2):
- one projector per teacher, PFP_k = conv3x3(c_l -> h_l), ReLU, conv3x3(h_l -> h_l);
- one inverse projector per teacher, IPFP_k = conv3x3(h_l -> c_l), ReLU, conv3x3(c_l -> c_l);
- one student projector PFP_s of the same form as PFP_k, from the student's own channel count,
  which may differ from the teachers' (a smaller student).
All convolutions have no bias and Kaiming-normal weights. The training task computes the losses
from what `CKT.forward` returns (METHOD.md, stage 1):
PFE = L1(student, teacher) and PFV = 0.05 * L1(recon, feat), each summed over taps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def projector(cin: int, cout: int) -> nn.Sequential:
    """conv3x3(cin -> cout), ReLU, conv3x3(cout -> cout), no bias, Kaiming-normal weights."""
    layers = nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
    )
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)
    return layers


class CKTTap(nn.Module):
    """The projectors of one feature tap."""

    def __init__(self, teacher_channels: int, student_channels: int, num_teachers: int) -> None:
        super().__init__()
        hidden = teacher_channels // 2
        self.teacher_projectors = nn.ModuleList(
            projector(teacher_channels, hidden) for _ in range(num_teachers)
        )
        self.inverse_projectors = nn.ModuleList(
            projector(hidden, teacher_channels) for _ in range(num_teachers)
        )
        self.student_projector = projector(student_channels, hidden)

    def forward(
        self, student_tap: torch.Tensor, teacher_taps: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        projected = [p(t) for p, t in zip(self.teacher_projectors, teacher_taps)]
        recon = [ip(z) for ip, z in zip(self.inverse_projectors, projected)]
        return {
            "student": self.student_projector(student_tap),
            "teacher": torch.cat(projected, 0),
            "recon": torch.cat(recon, 0),
            "feat": torch.cat(list(teacher_taps), 0),
        }


class CKT(nn.Module):
    """Collaborative knowledge transfer over the four feature taps (METHOD.md, stage 1).

    Args:
        teacher_channels: channels of each teacher tap (all teachers share one architecture),
            e.g. MSBDN's (64, 128, 256, 256).
        student_channels: channels of each student tap (the student's `tap_channels`).
        num_teachers: how many teachers (one per weather type).

    `forward(student_taps, teacher_taps)` takes the student's taps, computed on the batch that
    concatenates every teacher's samples in teacher order (batch sum B_k), and `teacher_taps[k][l]`,
    tap l of teacher k computed on its own B_k samples. Student and teacher taps of one level must
    have the same height and width. It returns, per tap, a dict of tensors with the student's batch:
    "student" (PFP_s of the student tap), "teacher" (PFP_k of each teacher's tap, concatenated over
    k along the batch), "recon" (IPFP_k(PFP_k(tap)), concatenated likewise) and "feat" (the
    teachers' taps, concatenated).
    """

    def __init__(
        self, teacher_channels: Sequence[int], student_channels: Sequence[int], num_teachers: int
    ) -> None:
        super().__init__()
        if len(teacher_channels) != len(student_channels):
            raise ValueError(f"{len(teacher_channels)} teacher taps but {len(student_channels)} student taps")
        if num_teachers < 1:
            raise ValueError("CKT needs at least one teacher")
        self.num_teachers = num_teachers
        self.taps = nn.ModuleList(
            CKTTap(int(tc), int(sc), num_teachers) for tc, sc in zip(teacher_channels, student_channels)
        )

    def forward(
        self, student_taps: Sequence[torch.Tensor], teacher_taps: Sequence[Sequence[torch.Tensor]]
    ) -> list[dict[str, torch.Tensor]]:
        """Project every tap; see the class docstring for the inputs and the returned dicts."""
        if len(teacher_taps) != self.num_teachers:
            raise ValueError(f"expected taps of {self.num_teachers} teachers, got {len(teacher_taps)}")
        if len(student_taps) != len(self.taps):
            raise ValueError(f"expected {len(self.taps)} student taps, got {len(student_taps)}")
        results = []
        for level, (module, student_tap) in enumerate(zip(self.taps, student_taps)):
            per_teacher = [taps[level] for taps in teacher_taps]
            batch = sum(t.shape[0] for t in per_teacher)
            if student_tap.shape[0] != batch or any(
                t.shape[-2:] != student_tap.shape[-2:] for t in per_teacher
            ):
                raise ValueError(
                    f"tap {level}: student {tuple(student_tap.shape)} does not match teachers "
                    f"{[tuple(t.shape) for t in per_teacher]} (batch must be the sum, sizes equal)"
                )
            results.append(module(student_tap, per_teacher))
        return results
