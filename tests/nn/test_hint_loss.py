"""kdops.nn.HintLoss: Chen 2017 hint learning with the 1x1 adaptation layer."""

import pytest
import torch

import kdops
from kdops.reference.feature_imitation import feature_imitation as reference


def test_adapts_student_channels_and_trains_the_adaptation():
    torch.manual_seed(0)
    hint = kdops.nn.HintLoss(8, 16, loss="mse", normalize="mean", weight=0.5)
    student = torch.randn(2, 8, 5, 7, requires_grad=True)
    teacher = torch.randn(2, 16, 5, 7)
    mask = torch.rand(2, 5, 7)
    out = hint(student, teacher, mask)
    expected = 0.5 * reference(hint.adapt(student), teacher, mask=mask, loss="mse", normalize="mean")
    torch.testing.assert_close(out, expected)
    out.backward()
    assert student.grad is not None and hint.adapt.weight.grad is not None


def test_adaptation_is_used_even_when_channels_match():
    hint = kdops.nn.HintLoss(4, 4)
    assert isinstance(hint.adapt, torch.nn.Conv2d)


def test_adapt_off_needs_equal_channels():
    assert kdops.nn.HintLoss(4, 4, adapt=False).adapt is None
    with pytest.raises(ValueError, match="adapt=False needs equal channel counts"):
        kdops.nn.HintLoss(4, 8, adapt=False)


def test_teacher_dtype_follows_student():
    hint = kdops.nn.HintLoss(3, 3, adapt=False)
    out = hint(torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4))
    assert out.dtype == torch.float64


def test_fits_a_teacher():
    """A few optimiser steps of the adaptation layer alone reduce the loss: the gradient is right."""
    torch.manual_seed(1)
    hint = kdops.nn.HintLoss(6, 6)
    student, teacher = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    opt = torch.optim.SGD(hint.parameters(), lr=0.1)
    first = hint(student, teacher).item()
    for _ in range(30):
        opt.zero_grad()
        hint(student, teacher).backward()
        opt.step()
    assert hint(student, teacher).item() < 0.8 * first
