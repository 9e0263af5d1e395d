"""kdops.relation_mse (docs/math.md §4): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import relation_mse as reference
from support import parity
from support.backends import on_cpu, opcheck_params, registered_op
from support.numerics import randn


def _case_inputs(case, dtype, device):
    shape, seed = case.shape, case.seed
    return dict(student=randn(shape, dtype, device, seed, requires_grad=True),
                # a teacher that requires grad gets the negated gradient
                teacher=randn(shape, dtype, device, seed + 1, requires_grad=case.index % 2 == 0),
                delta_s=randn(shape[:2], torch.float32, device, seed + 2, requires_grad=True),
                delta_t=randn(shape[:2], torch.float32, device, seed + 3, requires_grad=True))


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.relation_mse(**a, backend=backend),),
    expected=lambda student, teacher, **a: (reference.relation_mse(student, teacher, **a),),
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)], out_scale=1e3,
    grad_scale={"student": 10, "teacher": 10, "delta_s": 100, "delta_t": 100})


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


def test_reference_closed_form_backward_matches_autograd():
    student = randn((2, 6, 5, 7), torch.float64, "cpu", 11, requires_grad=True)
    teacher = randn((2, 6, 5, 7), torch.float64, "cpu", 12)
    delta_s, delta_t = randn((2, 6), torch.float64, "cpu", 13), randn((2, 6), torch.float64, "cpu", 14)
    grad = torch.tensor(1.7, dtype=torch.float64)
    expected = torch.autograd.grad(grad * reference.relation_mse(student, teacher, delta_s=delta_s, delta_t=delta_t), student)[0]
    closed = reference.relation_mse_backward(grad, student.detach(), teacher, delta_s, delta_t)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
def test_gradcheck_float64(backend):
    args = [randn((2, 3, 4, 5), torch.float64, "cpu", 5 + i, requires_grad=True) for i in range(2)]
    args += [randn((2, 3), torch.float64, "cpu", 7 + i, requires_grad=True) for i in range(2)]
    assert torch.autograd.gradcheck(lambda s, t, ds, dt: kdops.relation_mse(s, t, delta_s=ds, delta_t=dt, backend=backend), args)


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("relation_mse", backend)
    args = [randn((2, 3, 4, 5), torch.float32, device, 5 + i, requires_grad=True) for i in range(2)]
    args += [randn((2, 3), torch.float32, device, 7 + i, requires_grad=True) for i in range(2)]
    opcheck(op, tuple(args))


def test_compile_fullgraph():
    def fn(s, t, ds, dt):
        return kdops.relation_mse(s, t, delta_s=ds, delta_t=dt)

    s, t = randn((2, 4, 6, 5), torch.float32, "cpu", 1, True), randn((2, 4, 6, 5), torch.float32, "cpu", 2)
    ds, dt = randn((2, 4), torch.float32, "cpu", 3, True), randn((2, 4), torch.float32, "cpu", 4, True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(s, t, ds, dt)
    grads = torch.autograd.grad(out, (s, ds, dt))
    torch.testing.assert_close(out, fn(s, t, ds, dt))
    for a, b in zip(grads, torch.autograd.grad(fn(s, t, ds, dt), (s, ds, dt))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_empty_batch_gives_zero(backend):
    empty = torch.zeros(0, 4, 3, 5)
    assert kdops.relation_mse(empty, empty, delta_s=torch.zeros(0, 4), delta_t=torch.zeros(0, 4), backend=backend).item() == 0


@pytest.mark.parametrize("change,error,match", [
    ({"delta_s": torch.zeros(2, 4)}, ValueError, r"delta_s must have shape \(N, C\) = \(2, 3\)"),
    ({"delta_t": torch.zeros(2, 3, device="meta")}, ValueError, "delta_t must be on cpu"),
    ({"delta_t": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "delta_t must be float16"),
    ({"teacher": torch.zeros(2, 3, 4, 6)}, ValueError, "must have the same shape"),
    ({"student": torch.zeros(2, 3, 4)}, ValueError, "student must be a 4-D"),
])
def test_bad_input(change, error, match):
    args = dict(student=torch.randn(2, 3, 4, 5), teacher=torch.randn(2, 3, 4, 5), delta_s=torch.zeros(2, 3),
                delta_t=torch.zeros(2, 3))
    args.update(change)
    with pytest.raises(error, match=match):
        kdops.relation_mse(**args)
