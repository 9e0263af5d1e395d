"""kdops.feature_imitation (docs/math.md §5): every backend against the reference, gradients, registration,
bad input."""

import itertools

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import feature_imitation as reference
from support import parity
from support.backends import on_cpu, opcheck_params, registered_op, require_backend
from support.numerics import assert_compiles_like_eager, randn

MODES = list(itertools.product(("mse", "l1"), ("batch", "mean", "mask"), (False, True)))  # loss, normalize, mask


def _inputs(shape, dtype, device, seed, with_mask):
    """Student, teacher (kept >= 0.05 apart so |S - T| stays off its kink) and an optional mask."""
    student = randn(shape, dtype, device, seed)
    gap = randn(shape, torch.float64, device, seed + 1)
    teacher = (student.double() + torch.sign(gap) * (0.05 + gap.abs())).to(dtype)
    mask = None
    if with_mask:
        n, _, h, w = shape
        g = torch.Generator().manual_seed(seed + 2)
        mask = (torch.rand((n, h, w), generator=g, dtype=torch.float64) * (torch.rand((n, h, w), generator=g) > 0.3))
        mask = mask.to(device=device, dtype=dtype)
    return student, teacher, mask


def _case_inputs(case, dtype, device):
    loss, normalize, with_mask = case.mode
    student, teacher, mask = _inputs(case.shape, dtype, device, case.seed, with_mask)
    # a teacher that requires grad gets the negated gradient
    return dict(student=student.requires_grad_(), teacher=teacher.requires_grad_(case.index % 2 == 0), mask=mask,
                loss=loss, normalize=normalize)


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.feature_imitation(**a, backend=backend),),
    expected=lambda student, teacher, **a: (reference.feature_imitation(student, teacher, **a),),
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)], modes=MODES,
    strided=("student", "teacher", "mask"), out_scale=1e3)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


def test_reference_closed_form_backward_matches_autograd():
    for loss, normalize, with_mask in MODES:
        student, teacher, mask = _inputs((2, 5, 3, 4), torch.float64, "cpu", 21, with_mask)
        student.requires_grad_()
        out = reference.feature_imitation(student, teacher, mask=mask, loss=loss, normalize=normalize)
        expected = torch.autograd.grad(out * 1.7, student)[0]
        norm = reference.normalizer(student, mask, normalize)
        closed = reference.feature_imitation_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(),
                                                      teacher, mask, norm, loss)
        torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("loss,normalize,with_mask", MODES)
def test_gradcheck_float64(backend, loss, normalize, with_mask):
    student, teacher, mask = _inputs((2, 3, 4, 5), torch.float64, "cpu", 5, with_mask)
    student.requires_grad_()
    teacher.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s, t: kdops.feature_imitation(s, t, mask=mask, loss=loss, normalize=normalize, backend=backend),
        (student, teacher))


@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("with_mask", [False, True])
def test_opcheck(backend, device, with_mask):
    op = registered_op("feature_imitation", backend)
    student, teacher, mask = _inputs((2, 3, 4, 5), torch.float32, device, 7, with_mask)
    opcheck(op, (student.requires_grad_(), teacher, mask, 0, 2))
    opcheck(op, (student, teacher.requires_grad_(), mask, 1, 0))


def test_compile_fullgraph():
    def loss_fn(student, teacher, mask):
        spatial, _ = kdops.attention_masks(teacher)
        return kdops.feature_imitation(student, teacher, mask=mask * spatial.to(mask.dtype), loss="mse",
                                       normalize="mask")

    student, teacher, mask = _inputs((2, 4, 6, 5), torch.float32, "cpu", 9, True)
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, mask)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_empty_batch_is_zero(backend):
    s = torch.zeros(0, 3, 4, 5, requires_grad=True)
    out = kdops.feature_imitation(s, torch.zeros(0, 3, 4, 5), backend=backend)
    out.backward()
    assert out.item() == 0.0 and s.grad.shape == s.shape


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_all_zero_mask_with_mask_normalisation_is_zero(backend):
    s = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = kdops.feature_imitation(s, torch.randn(2, 3, 4, 5), mask=torch.zeros(2, 4, 5), normalize="mask",
                                  backend=backend)
    out.backward()
    assert out.item() == 0.0 and not s.grad.any()


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_bool_mask_equals_float_mask(backend):
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    m = torch.rand(2, 4, 5) > 0.5
    a = kdops.feature_imitation(s, t, mask=m, normalize="mask", backend=backend)
    b = kdops.feature_imitation(s, t, mask=m.float(), normalize="mask", backend=backend)
    torch.testing.assert_close(a, b)


def test_backend_from_environment(monkeypatch):
    s, t = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    monkeypatch.setenv("KDOPS_BACKEND", "reference")
    assert kdops.feature_imitation(s, t).grad_fn is None  # the reference on no-grad inputs builds no graph
    monkeypatch.setenv("KDOPS_BACKEND", "cuda")
    with pytest.raises(kdops.BackendUnavailableError, match="backend 'cuda' cannot run"):
        kdops.feature_imitation(s, t)
    with pytest.raises(kdops.BackendUnavailableError):  # the argument wins over the variable ...
        kdops.feature_imitation(s, t, backend="cuda")
    assert kdops.feature_imitation(s, t, backend="reference").shape == ()  # ... both ways
    monkeypatch.setenv("KDOPS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="KDOPS_BACKEND must be one of"):
        kdops.feature_imitation(s, t)


X = torch.randn(2, 3, 4, 5)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(2, 3, 4, 6)), {}, ValueError, "student and teacher must have the same shape"),
    ((X, X.double()), {}, TypeError, "student and teacher must have the same dtype"),
    ((X, X.to("meta")), {}, ValueError, "student and teacher must be on the same device"),
    ((X.long(), X.long()), {}, TypeError, "student must be float16"),
    ((X[0], X[0]), {}, ValueError, "student must be a 4-D"),
    ((X, X), {"mask": torch.ones(2, 4)}, ValueError, r"mask must have shape \(N, H, W\)"),
    ((X, X), {"mask": torch.ones(2, 4, 5, dtype=torch.long)}, TypeError, "mask must be a floating or bool"),
    ((X, X), {"mask": torch.ones(2, 4, 5, requires_grad=True)}, ValueError, "must not require grad"),
    ((X, X), {"loss": "huber"}, ValueError, "loss must be one of"),
    ((X, X), {"normalize": "sum"}, ValueError, "normalize must be one of"),
    ((X, X), {"backend": "mps"}, ValueError, "backend must be one of"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.feature_imitation(*args, **kwargs)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match="student and teacher must have the same shape"):
        torch.ops.kdops.feature_imitation(X, torch.randn(2, 3, 4, 6), None, 0, 0)
    with pytest.raises(RuntimeError, match="loss must be 0"):
        torch.ops.kdops.feature_imitation(X, X, None, 7, 0)
