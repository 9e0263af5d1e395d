"""kdops.nn.QualityFocalKDLoss (docs/math.md §12): the official reductions (avg_factor), the module's defaults and
its bad input."""

import pytest
import torch
import torch.nn.functional as F

import kdops
from kdops.nn import QualityFocalKDLoss


def _inputs(rows=30, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(rows, classes, generator=g)).requires_grad_()
    teacher = 2 * torch.randn(rows, classes, generator=g)
    label_weights = (torch.arange(rows) % 4 != 0).float()
    return student, teacher, label_weights


def _official(student, teacher, weight, avg_factor, beta=1.0):
    """CrossKD's kd_quality_focal_loss through mmdet's weight_reduce_loss (its eps dropped)."""
    p = teacher.detach().sigmoid()
    loss = F.binary_cross_entropy_with_logits(student, p, reduction="none") * (student.sigmoid() - p).abs().pow(beta)
    if weight is not None:
        loss = loss * weight[:, None].repeat(1, student.shape[1])
    return loss.sum() / avg_factor


def test_defaults():
    module = QualityFocalKDLoss()
    assert (module.beta, module.normalize, module.loss_weight) == (1.0, "mean", 1.0)
    assert "beta=1.0" in repr(module) and "normalize='mean'" in repr(module)


@pytest.mark.parametrize("avg_factor", [7, 7.0, torch.tensor(7.0)])
def test_avg_factor_is_the_official_reduction(avg_factor):
    student, teacher, label_weights = _inputs()
    out = QualityFocalKDLoss(loss_weight=0.4)(student, teacher, label_weights, avg_factor=avg_factor)
    expected = 0.4 * _official(student, teacher, label_weights, 7.0)
    torch.testing.assert_close(out, expected)
    grad = torch.autograd.grad(out, student)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(expected, student)[0])


def test_without_avg_factor_the_op_normalises():
    student, teacher, label_weights = _inputs()
    for normalize in ("sum", "mean", "weight"):
        module = QualityFocalKDLoss(beta=2.0, normalize=normalize, loss_weight=3.0)
        torch.testing.assert_close(module(student, teacher, label_weights), 3.0 * kdops.quality_focal_kd(
            student, teacher, weight=label_weights, beta=2.0, normalize=normalize))


def test_the_teacher_is_detached_and_cast():
    student, teacher, _ = _inputs()
    teacher = teacher.double().requires_grad_()
    out = QualityFocalKDLoss()(student, teacher)
    out.backward()
    assert teacher.grad is None and student.grad is not None
    torch.testing.assert_close(out, kdops.quality_focal_kd(student, teacher.detach().float()))


def test_leading_dimensions_are_rows():
    """(N, anchors, C) logits with (N, anchors) label weights: the same as the flattened rows."""
    student, teacher, label_weights = _inputs(rows=24)
    module = QualityFocalKDLoss()
    torch.testing.assert_close(module(student.reshape(2, 12, 6), teacher.reshape(2, 12, 6), label_weights.reshape(2, 12),
                                      avg_factor=5), module(student, teacher, label_weights, avg_factor=5))


S, T = torch.randn(4, 3), torch.randn(4, 3)


@pytest.mark.parametrize("kwargs,forward,error,match", [
    ({}, {"avg_factor": 0}, ValueError, "QualityFocalKDLoss: avg_factor must be a number > 0"),
    ({}, {"avg_factor": -2.0}, ValueError, "avg_factor must be a number > 0"),
    ({"beta": -1.0}, {}, ValueError, "quality_focal_kd: beta must be a number >= 0"),
    ({"normalize": "none"}, {}, ValueError, r"normalize must be one of \('sum', 'mean', 'weight'\)"),
])
def test_bad_input(kwargs, forward, error, match):
    with pytest.raises(error, match=match):
        QualityFocalKDLoss(**kwargs)(S, T, **forward)
