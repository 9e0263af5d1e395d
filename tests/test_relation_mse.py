"""kdops.relation_mse (docs/math.md §4): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import relation_mse as reference
from support import DTYPES, assert_close, backend_params, non_contiguous, randn, parity_shapes

SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)]
SMALL_SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)]  # for the Triton interpreter


def _expected(student, teacher, delta_s, delta_t, grad_out):
    leaves = [x.detach().double().requires_grad_() for x in (student, teacher, delta_s, delta_t)]
    out = reference.relation_mse(leaves[0], leaves[1], delta_s=leaves[2], delta_t=leaves[3])
    (out * grad_out).backward()
    return out.detach(), [x.grad for x in leaves]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_matches_reference(backend, device, dtype, layout):
    shapes = parity_shapes(backend, device, SHAPES, SMALL_SHAPES)
    for i, shape in enumerate(shapes):
        seed = torch.randint(0, 2**31 - 1, ()).item() + i  # fresh inputs every run
        student, teacher = randn(shape, dtype, device, seed), randn(shape, dtype, device, seed + 1)
        if layout == "non_contiguous":
            student, teacher = non_contiguous(student), non_contiguous(teacher)
        student.requires_grad_()
        teacher.requires_grad_(i % 2 == 0)  # a teacher that requires grad gets the negated gradient
        delta_s = randn(shape[:2], torch.float32, device, seed + 2, requires_grad=True)
        delta_t = randn(shape[:2], torch.float32, device, seed + 3, requires_grad=True)
        grad_out = 0.5 + i % 3
        out = kdops.relation_mse(student, teacher, delta_s=delta_s, delta_t=delta_t, backend=backend)
        exp, exp_grads = _expected(student, teacher, delta_s, delta_t, grad_out)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert out.shape == () and out.dtype == acc
        assert_close(out, exp, acc, scale=1e3)
        (out * grad_out).backward()
        assert student.grad.dtype == dtype
        assert_close(student.grad, exp_grads[0], dtype, scale=10)
        if teacher.requires_grad:
            assert_close(teacher.grad, exp_grads[1], dtype, scale=10)
        assert_close(delta_s.grad, exp_grads[2], torch.float32, scale=100)
        assert_close(delta_t.grad, exp_grads[3], torch.float32, scale=100)


def test_reference_closed_form_backward_matches_autograd():
    student = randn((2, 6, 5, 7), torch.float64, "cpu", 11, requires_grad=True)
    teacher = randn((2, 6, 5, 7), torch.float64, "cpu", 12)
    delta_s, delta_t = randn((2, 6), torch.float64, "cpu", 13), randn((2, 6), torch.float64, "cpu", 14)
    grad = torch.tensor(1.7, dtype=torch.float64)
    expected = torch.autograd.grad(grad * reference.relation_mse(student, teacher, delta_s=delta_s, delta_t=delta_t), student)[0]
    closed = reference.relation_mse_backward(grad, student.detach(), teacher, delta_s, delta_t)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    if kdops.available_backends()[backend] != "available":
        pytest.skip(kdops.available_backends()[backend])
    args = [randn((2, 3, 4, 5), torch.float64, "cpu", 5 + i, requires_grad=True) for i in range(2)]
    args += [randn((2, 3), torch.float64, "cpu", 7 + i, requires_grad=True) for i in range(2)]
    assert torch.autograd.gradcheck(lambda s, t, ds, dt: kdops.relation_mse(s, t, delta_s=ds, delta_t=dt, backend=backend), args)


@pytest.mark.parametrize("backend,device", backend_params())
def test_opcheck(backend, device):
    op = torch.ops.kdops_triton.relation_mse if backend == "triton" else torch.ops.kdops.relation_mse
    args = [randn((2, 3, 4, 5), torch.float32, device, 5 + i, requires_grad=True) for i in range(2)]
    args += [randn((2, 3), torch.float32, device, 7 + i, requires_grad=True) for i in range(2)]
    opcheck(op.default, tuple(args))


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


def test_empty_batch_gives_zero():
    for backend in ("reference", "cpu"):
        if kdops.available_backends()[backend] != "available":
            continue
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
