"""kdops.bounded_regression (docs/math.md §7): every backend against the reference, per-row bounds, gradients,
registration, bad input."""

import itertools

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import bounded_regression as reference
from support import parity
from support.backends import backends_on_cpu, on_cpu, opcheck_params, registered_op
from support.numerics import assert_compiles_like_eager, randn

MODES = list(itertools.product((0.0, 0.25), (False, True)))  # (margin, per-row weight)


def _inputs(shape, dtype, device, seed, with_weight, margin=0.0):
    """Student, teacher, target with every row's e_s + margin - e_t at least 0.05 away from 0 (off the kink)."""
    target = randn(shape, torch.float64, device, seed)
    student = target + randn(shape, torch.float64, device, seed + 1)
    teacher = target + 1.2 * randn(shape, torch.float64, device, seed + 2)
    gap = ((student - target) ** 2).sum(-1) + margin - ((teacher - target) ** 2).sum(-1)
    near = gap.abs() < 0.05
    teacher[near] = target[near]  # e_t = 0: the row is active whatever the student
    weight = None
    if with_weight:
        g = torch.Generator().manual_seed(seed + 3)
        weight = (torch.rand(shape[:-1], generator=g, dtype=torch.float64) > 0.5).to(device, torch.float64)
    return student.to(dtype), teacher.to(dtype), target.to(dtype), weight


def _case_inputs(case, dtype, device):
    margin, with_weight = case.mode
    student, teacher, target, weight = _inputs(case.shape, dtype, device, case.seed, with_weight, margin)
    return dict(student_reg=student.requires_grad_(), teacher_reg=teacher, target=target,
                weight=None if weight is None else weight.float(), margin=margin)


def _expected(student_reg, teacher_reg, target, weight, margin):
    d = student_reg.shape[-1]
    return reference.bounded_regression(student_reg.reshape(-1, d), teacher_reg.reshape(-1, d),
                                        target=target.reshape(-1, d),
                                        weight=None if weight is None else weight.reshape(-1), margin=margin)[:1]


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.bounded_regression(**a, backend=backend),),
    expected=_expected, shapes=[(1, 4), (1024, 4), (37, 91, 4), (5, 7)],
    small_shapes=[(1, 4), (300, 4), (3, 5, 4), (4, 7)], modes=MODES,
    strided=("student_reg", "teacher_reg", "target"))


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("margin,with_weight", MODES)
def test_reference_closed_form_backward_matches_autograd(margin, with_weight):
    student, teacher, target, weight = _inputs((30, 4), torch.float64, "cpu", 3, with_weight, margin)
    student.requires_grad_()
    out, norm = reference.bounded_regression(student, teacher, target=target, weight=weight, margin=margin)
    expected = torch.autograd.grad(out * 1.7, student)[0]
    closed = reference.bounded_regression_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(), teacher,
                                                   target, weight, norm, margin)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("margin,with_weight", MODES)
def test_gradcheck_float64(backend, margin, with_weight):
    student, teacher, target, weight = _inputs((9, 4), torch.float64, "cpu", 5, with_weight, margin)
    student.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: kdops.bounded_regression(s, teacher, target=target, weight=weight, margin=margin,
                                           backend=backend), (student,))



def test_bound_is_decided_per_row():
    """Row 0: student worse than teacher (penalised); row 1: better (free); row 2: better, but not by the margin."""
    y = torch.zeros(3, 4)
    s = torch.tensor([[1.0, 0, 0, 0], [0.1, 0, 0, 0], [0.5, 0, 0, 0]], requires_grad=True)
    t = torch.tensor([[0.5, 0, 0, 0], [1.0, 0, 0, 0], [0.6, 0, 0, 0]])
    for backend in backends_on_cpu():
        s.grad = None
        out = kdops.bounded_regression(s, t, target=y, margin=0.2, backend=backend)
        torch.testing.assert_close(out, torch.tensor((1.0 + 0.25) / 3))
        out.backward()
        torch.testing.assert_close(s.grad[:, 0], torch.tensor([2 * 1.0 / 3, 0.0, 2 * 0.5 / 3]))
        # without the margin, row 2 is better than the teacher and free too
        torch.testing.assert_close(kdops.bounded_regression(s, t, target=y, backend=backend), torch.tensor(1.0 / 3))


@pytest.mark.parametrize("nan_side", ["teacher", "student"])
def test_a_nan_row_poisons_the_loss_instead_of_being_dropped(nan_side):
    """A NaN e_t makes e_s + m > e_t false: the row must not silently drop out (docs/math.md §7.3). Its weight
    is not 0 (-0.5: counted, but not in Z); a row of weight 0 does drop out (tests/ops/test_zero_weight_rows.py)."""
    y = torch.zeros(3, 4)
    s = torch.tensor([[1.0, 0, 0, 0], [0.1, 0, 0, 0], [0.5, 0, 0, 0]])
    t = torch.tensor([[0.5, 0, 0, 0], [1.0, 0, 0, 0], [0.6, 0, 0, 0]])
    (t if nan_side == "teacher" else s)[1, 2] = float("nan")
    for backend in backends_on_cpu():
        for weight in (None, torch.tensor([1.0, -0.5, 1.0])):
            student = s.clone().requires_grad_()
            out = kdops.bounded_regression(student, t, target=y, weight=weight, backend=backend)
            assert out.isnan(), backend
            out.backward()
            assert student.grad[1].isnan().all(), backend
            torch.testing.assert_close(student.grad[[0, 2]], torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]) * 2 / (
                3 if weight is None else 2), msg=backend)


def test_weight_mean_is_over_rows_with_positive_weight():
    y = torch.randn(6, 4)
    s, t = y + torch.randn(6, 4), y.clone()  # a perfect teacher: every row is bounded (active)
    w = torch.tensor([1.0, 0, 2.0, 0, 0, 1.0])
    expected = (w * ((s - y) ** 2).sum(1)).sum() / 3
    for backend in backends_on_cpu():
        torch.testing.assert_close(kdops.bounded_regression(s, t, target=y, weight=w, backend=backend), expected)
        assert kdops.bounded_regression(s, t, target=y, weight=torch.zeros(6), backend=backend).item() == 0.0


def test_teacher_gets_no_gradient():
    s, y = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    t = torch.randn(5, 4, requires_grad=True)
    for backend in backends_on_cpu():
        out = kdops.bounded_regression(s, t, target=y, backend=backend)
        out.backward()
        assert t.grad is None or not t.grad.any(), backend


@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("with_weight", [False, True])
def test_opcheck(backend, device, with_weight):
    op = registered_op("bounded_regression", backend)
    student, teacher, target, weight = _inputs((9, 4), torch.float32, device, 7, with_weight)
    weight = None if weight is None else weight.float()
    opcheck(op, (student.requires_grad_(), teacher, target, weight, 0.1))


def test_compile_fullgraph():
    def loss_fn(student, teacher, target, weight):
        return kdops.bounded_regression(student, teacher, target=target, weight=weight, margin=0.1)

    student, teacher, target, weight = _inputs((8, 3, 4), torch.float32, "cpu", 9, True)
    weight = weight.float()
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, target, weight)


X = torch.randn(6, 4)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(5, 4), X), {}, ValueError, "student_reg and teacher_reg must have the same shape"),
    ((X, X, torch.randn(6, 3)), {}, ValueError, "student_reg and target must have the same shape"),
    ((X, X, X.double()), {}, TypeError, "student_reg and target must have the same dtype"),
    ((X.long(), X.long(), X.long()), {}, TypeError, "student_reg must be float16"),
    ((X, X, torch.randn(6, 4, requires_grad=True)), {}, ValueError, "target gets no gradient"),
    ((X, X, X), {"weight": torch.ones(5)}, ValueError, r"weight must have the rows' shape \(6,\)"),
    ((X, X, X), {"weight": torch.ones(6, requires_grad=True)}, ValueError, "weight gets no gradient"),
    ((X, X, X), {"margin": float("nan")}, ValueError, "margin must be a finite number"),
    ((torch.randn(3, 0),) * 3, {}, ValueError, "non-empty last dimension"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.bounded_regression(*args[:2], target=args[2], **kwargs)
