"""The CKT projectors: shapes, differing student/teacher channels, gradients, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unweather.models import CKT, build


def taps(batch: int, channels, size: int = 16) -> list[torch.Tensor]:
    return [torch.rand(batch, c, size // s, size // s) for c, s in zip(channels, (1, 2, 4, 4))]


def test_shapes_with_a_smaller_student():
    teacher_channels, student_channels = (64, 128, 256, 256), (16, 24, 32, 32)
    ckt = CKT(teacher_channels, student_channels, num_teachers=3)
    batches = (2, 1, 3)
    teacher = [taps(b, teacher_channels) for b in batches]
    student = taps(sum(batches), student_channels)
    out = ckt(student, teacher)
    assert len(out) == 4
    for level, (c, d) in enumerate(zip(teacher_channels, out)):
        h = c // 2
        size = student[level].shape[-2:]
        assert d["student"].shape == (6, h, *size)
        assert d["teacher"].shape == (6, h, *size)
        assert d["recon"].shape == (6, c, *size)
        assert torch.equal(d["feat"], torch.cat([t[level] for t in teacher], 0))


def test_teacher_projectors_are_per_teacher_and_in_batch_order():
    ckt = CKT((8, 8, 8, 8), (4, 4, 4, 4), num_teachers=2)
    same = taps(1, (8, 8, 8, 8))
    out = ckt(taps(2, (4, 4, 4, 4)), [same, same])
    projected = out[0]["teacher"]
    # The same features through two teachers' projectors differ, and each half is its own.
    assert not torch.allclose(projected[0], projected[1])
    assert torch.allclose(projected[1:], ckt.taps[0].teacher_projectors[1](same[0]))


def test_projectors_have_no_bias_and_kaiming_weights():
    ckt = CKT((64, 128, 256, 256), (16, 32, 48, 48), num_teachers=2)
    convs = [m for m in ckt.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 * (2 * 2 + 2 * 2 + 2)
    assert all(m.bias is None for m in convs)
    first = ckt.taps[3].teacher_projectors[0][0].weight
    # Kaiming normal (fan_in, gain sqrt(2)): std = sqrt(2 / (256 * 9)).
    assert first.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.1)


def test_losses_train_every_projector():
    teacher_channels = (8, 16, 32, 32)
    student = build("student_small", widths=(8, 12, 16, 20))
    ckt = CKT(teacher_channels, student.tap_channels, num_teachers=2)
    x = torch.rand(4, 3, 32, 32)
    _, student_taps = student(x, return_feat=True)
    teacher = [taps(2, teacher_channels, size=8), taps(2, teacher_channels, size=8)]
    out = ckt(student_taps, teacher)
    pfe = sum(F.l1_loss(d["student"], d["teacher"]) for d in out)
    pfv = 0.05 * sum(F.l1_loss(d["recon"], d["feat"]) for d in out)
    (pfe + pfv).backward()
    missing = [n for n, p in ckt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    # PFE reaches the student's encoder (its decoder only gets gradients from the pixel losses).
    assert student.stem.weight.grad is not None and student.stem.weight.grad.abs().sum() > 0


def test_mismatched_inputs_raise():
    ckt = CKT((8, 8, 8, 8), (4, 4, 4, 4), num_teachers=2)
    with pytest.raises(ValueError, match="teachers"):
        ckt(taps(2, (4, 4, 4, 4)), [taps(1, (8, 8, 8, 8))])
    with pytest.raises(ValueError, match="batch"):
        ckt(taps(3, (4, 4, 4, 4)), [taps(1, (8, 8, 8, 8)), taps(1, (8, 8, 8, 8))])
    with pytest.raises(ValueError, match="student taps"):
        CKT((8, 8, 8, 8), (4, 4, 4), num_teachers=2)
