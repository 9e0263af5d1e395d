"""kdops.cwd_loss (docs/math.md §6): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import cwd_loss as reference
from support import parity
from support.backends import backends_on_cpu, on_cpu, opcheck_params, registered_op
from support.numerics import assert_compiles_like_eager, randn

TAUS = (1.0, 4.0)


def _inputs(case, dtype, device):
    student = (2 * randn(case.shape, torch.float64, device, case.seed)).to(dtype).requires_grad_()
    teacher = (2 * randn(case.shape, torch.float64, device, case.seed + 1)).to(dtype)
    return dict(student=student, teacher=teacher, tau=case.mode)


PARITY = parity.Parity(
    inputs=_inputs, run=lambda backend, **a: (kdops.cwd_loss(**a, backend=backend),),
    expected=lambda student, teacher, tau: (reference.cwd_loss(student, teacher, tau=tau),),
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (2, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)], modes=TAUS)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("tau", TAUS)
def test_reference_closed_form_backward_matches_autograd(tau):
    student = randn((2, 3, 4, 5), torch.float64, "cpu", 3, requires_grad=True)
    teacher = randn((2, 3, 4, 5), torch.float64, "cpu", 4)
    expected = torch.autograd.grad(reference.cwd_loss(student, teacher, tau=tau) * 1.7, student)[0]
    closed = reference.cwd_loss_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(), teacher, tau)
    torch.testing.assert_close(closed, expected)


def test_reference_matches_the_kl_definition():
    s, t = randn((2, 3, 4, 5), torch.float64, "cpu", 1), randn((2, 3, 4, 5), torch.float64, "cpu", 2)
    tau = 2.0
    log_ps = torch.log_softmax(s.reshape(6, 20) / tau, dim=1)
    pt = torch.softmax(t.reshape(6, 20) / tau, dim=1)
    kl = torch.nn.functional.kl_div(log_ps, pt, reduction="sum")
    torch.testing.assert_close(reference.cwd_loss(s, t, tau=tau), kl * tau**2 / 6)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("tau", TAUS + (1e3,))  # 1e3: every row takes the near (large tau) form
def test_gradcheck_float64(backend, tau):
    student = randn((2, 3, 4, 5), torch.float64, "cpu", 5, requires_grad=True)
    teacher = randn((2, 3, 4, 5), torch.float64, "cpu", 6)
    assert torch.autograd.gradcheck(lambda s: kdops.cwd_loss(s, teacher, tau=tau, backend=backend), (student,))


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("cwd_loss", backend)
    student = randn((2, 3, 4, 5), torch.float32, device, 7, requires_grad=True)
    opcheck(op, (student, randn((2, 3, 4, 5), torch.float32, device, 8), 2.0))


def test_compile_fullgraph():
    def loss_fn(student, teacher):
        return kdops.cwd_loss(student, teacher, tau=2.0) + kdops.pkd_loss(student, teacher)

    student = randn((2, 4, 6, 5), torch.float32, "cpu", 9, requires_grad=True)
    teacher = randn((2, 4, 6, 5), torch.float32, "cpu", 10)
    assert_compiles_like_eager(loss_fn, student, teacher)



def test_identical_maps_give_zero_and_large_values_stay_finite():
    s = torch.randn(2, 3, 5, 5) * 1e3
    for backend in backends_on_cpu():
        assert kdops.cwd_loss(s, s.clone(), backend=backend).abs().item() < 1e-6, backend
        out = kdops.cwd_loss(s, s.flip(-1), backend=backend)
        torch.testing.assert_close(out.double(), reference.cwd_loss(s.double(), s.flip(-1).double()),
                                   rtol=1e-5, atol=1e-2)


def _exact(student, teacher, tau):
    """cwd_loss and its gradient (grad = 1) in 80-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(80):
        n, c, h, w = student.shape
        tau_mp, total, grads = mpmath.mpf(tau), 0, []
        rows = zip(student.double().reshape(n * c, -1).tolist(), teacher.double().reshape(n * c, -1).tolist())
        for s_row, t_row in rows:
            a, b = [mpmath.mpf(x) / tau_mp for x in s_row], [mpmath.mpf(x) / tau_mp for x in t_row]
            ls, lt = mpmath.log(mpmath.fsum(map(mpmath.exp, a))), mpmath.log(mpmath.fsum(map(mpmath.exp, b)))
            total += mpmath.fsum(mpmath.exp(y - lt) * ((y - lt) - (x - ls)) for x, y in zip(a, b))
            grads += [tau_mp / (n * c) * (mpmath.exp(x - ls) - mpmath.exp(y - lt)) for x, y in zip(a, b)]
        loss = float(total * tau_mp * tau_mp / (n * c))
        return loss, torch.tensor([float(g) for g in grads], dtype=torch.float64).reshape(student.shape)


@pytest.mark.parametrize("tau", [1e-20, 1e-3, 1e3, 1e6, 1e20])
def test_extreme_tau_is_exact(tau):
    """At large tau the KL is second order in 1/tau: the log-softmax difference lost it to cancellation
    (float32 7% off at tau = 1e3, NaN at 1e20). The loss tends to half the variance of S - T per row."""
    student, teacher = randn((1, 2, 3, 4), torch.float64, "cpu", 11) * 3, randn((1, 2, 3, 4), torch.float64, "cpu", 12)
    loss, grad = _exact(student, teacher, tau)
    for backend in backends_on_cpu():
        for dtype in (torch.float64,) if backend == "reference" else (torch.float32, torch.float64):
            s = student.detach().to(dtype).requires_grad_()
            out = kdops.cwd_loss(s, teacher.to(dtype), tau=tau, backend=backend)
            out.backward()
            rtol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(out.double(), torch.tensor(loss, dtype=torch.float64), rtol=rtol, atol=0,
                                       msg=f"{backend} {dtype}")
            torch.testing.assert_close(s.grad.double(), grad, rtol=0, atol=rtol * grad.abs().max().item(),
                                       msg=f"{backend} {dtype}")


def test_empty_batch_is_zero_and_nan_propagates():
    for backend in backends_on_cpu():
        assert kdops.cwd_loss(torch.zeros(0, 3, 4, 5), torch.zeros(0, 3, 4, 5), backend=backend).item() == 0.0
        s = torch.randn(1, 2, 3, 3)
        s[0, 1, 1, 1] = float("nan")
        assert torch.isnan(kdops.cwd_loss(s, torch.randn(1, 2, 3, 3), backend=backend)), backend


X = torch.randn(2, 3, 4, 5)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(2, 3, 4, 6)), {}, ValueError, "student and teacher must have the same shape"),
    ((X, X.double()), {}, TypeError, "student and teacher must have the same dtype"),
    ((X[0], X[0]), {}, ValueError, "student must be a 4-D"),
    ((X, torch.randn(2, 3, 4, 5, requires_grad=True)), {}, ValueError, "teacher gets no gradient"),
    ((X, X), {"tau": 0}, ValueError, "tau must be a finite number >= 1e-30"),
    ((X, X), {"tau": 1e-31}, ValueError, r"tau must be a finite number >= 1e-30"),
    ((X, X), {"tau": float("inf")}, ValueError, r"tau must be a finite number >= 1e-30"),
    ((torch.zeros(1, 2, 0, 3),) * 2, {}, ValueError, r"H\*W >= 1"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.cwd_loss(*args, **kwargs)
