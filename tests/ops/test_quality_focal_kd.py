"""kdops.quality_focal_kd (docs/math.md §12, BCKD's and CrossKD's classification term): every backend against the
reference, the official formula, gradients, the kink, rows of weight 0, registration, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import kdops
from kdops.reference import quality_focal_kd as reference
from support import parity
from support.backends import backend_param, backend_params, backends_on_cpu, on_cpu, opcheck_params, registered_op
from support.numerics import DTYPES, assert_compiles_like_eager

# (beta, weighted, normalize): the official beta = 1 and GFL's 2 (the kernels' own paths) and a general beta
MODES = [(1.0, True, "sum"), (1.0, False, "mean"), (2.0, True, "weight"), (0.5, True, "mean"), (1.7, False, "sum")]
WEIGHTS = torch.tensor([0.0, 1.0, 0.5, -0.5, 2.0, 1.0], dtype=torch.float64)
KINK_GAP = 0.02  # the smallest |sigmoid(z_s) - sigmoid(z_t)| of the test points (docs/math.md §12: the kink)


def _logits(shape, dtype, device, seed):
    """Student and teacher logits in `dtype` whose probabilities differ by at least KINK_GAP everywhere."""
    g = torch.Generator().manual_seed(seed)
    s = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-6, 6).to(dtype).double()
    t = (2.5 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-6, 6).to(dtype).double()
    close = (torch.sigmoid(s) - torch.sigmoid(t)).abs() < KINK_GAP
    t = torch.where(close, s - 3.0 * torch.where(s > 0, 1.0, -1.0), t).to(dtype).double()
    assert ((torch.sigmoid(s) - torch.sigmoid(t)).abs() >= KINK_GAP).all()
    return s.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)


def _weight(rows_shape, device):
    n = 1
    for d in rows_shape:
        n *= d
    return WEIGHTS.repeat(n // len(WEIGHTS) + 1)[:n].reshape(rows_shape).to(device)


def _case_inputs(case, dtype, device):
    beta, weighted, normalize = case.mode
    student, teacher = _logits(case.shape, dtype, device, case.seed)
    weight = _weight(case.shape[:-1], device) if weighted else None
    return dict(student_logits=student.requires_grad_(), teacher_logits=teacher, weight=weight, beta=beta,
                normalize=normalize)


def _expected(student_logits, teacher_logits, weight, **options):
    classes = student_logits.shape[-1]
    w = None if weight is None else weight.reshape(-1)
    return reference.quality_focal_kd(student_logits.reshape(-1, classes), teacher_logits.reshape(-1, classes),
                                      weight=w, **options)[:1]


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.quality_focal_kd(**a, backend=backend),),
    expected=_expected,
    # 80 classes (COCO, whole 16-wide blocks of the CPU kernel), 91 and 17 (a masked last block), fewer than 16
    shapes=[(1, 1), (37, 80), (11, 91), (2, 3, 7), (300, 5)], small_shapes=[(1, 1), (13, 80), (5, 17), (2, 3, 7)],
    modes=MODES,
    strided=("student_logits", "teacher_logits"), out_scale=100.0)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.7, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_closed_form_backward_matches_autograd(beta, weighted):
    student, teacher = _logits((9, 7), torch.float64, "cpu", 3)
    weight = _weight((9,), "cpu") if weighted else None
    student.requires_grad_()
    out, norm = reference.quality_focal_kd(student, teacher, weight=weight, beta=beta, normalize="weight")
    expected = torch.autograd.grad(out * 1.7, student)[0]
    closed = reference.quality_focal_kd_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(), teacher,
                                                 weight, norm, beta)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_reference_is_the_official_formula(beta):
    """CrossKD's kd_quality_focal_loss (elementwise, then the weighted sum over avg_factor) and BCKD's NovelKDLoss
    (classes summed per anchor first) written out: both are kdops' "sum" over avg_factor."""
    student, teacher = _logits((40, 6), torch.float64, "cpu", 4)
    label_weights = (torch.arange(40) % 5 != 0).double()
    p = teacher.sigmoid()
    elementwise = F.binary_cross_entropy_with_logits(student, p, reduction="none") * (student.sigmoid() - p).abs() ** beta
    avg_factor = 7.0
    crosskd = (elementwise * label_weights[:, None].repeat(1, 6)).sum() / avg_factor
    bckd = (elementwise.sum(dim=1) * label_weights).sum() / avg_factor
    total, _ = reference.quality_focal_kd(student, teacher, weight=label_weights, beta=beta, normalize="sum")
    torch.testing.assert_close(total / avg_factor, crosskd)
    torch.testing.assert_close(total / avg_factor, bckd)
    mean, _ = reference.quality_focal_kd(student, teacher, beta=beta)
    torch.testing.assert_close(mean, elementwise.sum(dim=1).mean())  # BCKD's reduction="mean"


@pytest.mark.parametrize("backend", backends_on_cpu())
def test_normalizers(backend):
    student, teacher = _logits((12, 5), torch.float32, "cpu", 6)
    weight = _weight((12,), "cpu").float()
    total = kdops.quality_focal_kd(student, teacher, weight=weight, normalize="sum", backend=backend)
    for normalize, z in (("mean", 12.0), ("weight", weight.sum().item())):
        out = kdops.quality_focal_kd(student, teacher, weight=weight, normalize=normalize, backend=backend)
        torch.testing.assert_close(out, total / z)
    unweighted = kdops.quality_focal_kd(student, teacher, normalize="weight", backend=backend)  # "mean" then
    torch.testing.assert_close(unweighted, kdops.quality_focal_kd(student, teacher, backend=backend))
    balanced = torch.tensor([1.0, -1.0] * 6)  # the weights sum to 0: the loss is 0, and so is its gradient
    s = student.clone().requires_grad_()
    out = kdops.quality_focal_kd(s, teacher, weight=balanced, normalize="weight", backend=backend)
    out.backward()
    assert out.item() == 0.0 and not s.grad.any()


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("beta,weighted,normalize", MODES)
def test_gradcheck_float64(backend, beta, weighted, normalize):
    student, teacher = _logits((3, 19), torch.float64, "cpu", 5)  # 19 classes: the CPU kernel's masked last block
    weight = _weight((3,), "cpu") if weighted else None
    student.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: kdops.quality_focal_kd(
        s, teacher, weight=weight, beta=beta, normalize=normalize, backend=backend), (student,))


@pytest.mark.parametrize("backend", backends_on_cpu())
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_gradient_at_the_kink_is_zero(backend, beta):
    """d = 0 (equal logits): sign(0) = 0, so df/dz_s = 0 exactly, for beta < 1 too (where pow would give 0 * inf)."""
    z = torch.tensor([[-3.0, 0.0, 2.5]])
    student = z.clone().requires_grad_()
    out = kdops.quality_focal_kd(student, z.clone(), beta=beta, normalize="sum", backend=backend)
    out.backward()
    assert torch.equal(student.grad, torch.zeros_like(z))
    expected = F.binary_cross_entropy_with_logits(z, z.sigmoid(), reduction="sum") if beta == 0 else 0.0
    torch.testing.assert_close(out, torch.as_tensor(expected, dtype=torch.float32))


def test_huge_logits_are_finite_and_correct():
    s = torch.tensor([[1e4, -1e4, 80.0, -80.0, 0.0, 30.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, -90.0, 90.0, 3.0, -30.0]])
    expected = reference.quality_focal_kd(s.detach().double(), t.double(), normalize="sum")[0]
    for backend in backends_on_cpu():
        s.grad = None
        out = kdops.quality_focal_kd(s, t, normalize="sum", backend=backend)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all(), backend
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("backend", backends_on_cpu())
def test_empty_rows_give_a_connected_zero(backend):
    for normalize in ("sum", "mean", "weight"):
        s, t = torch.randn(0, 5, requires_grad=True), torch.randn(0, 5)
        loss = kdops.quality_focal_kd(s, t, weight=torch.ones(0), normalize=normalize, backend=backend)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.shape == (0, 5)


# Rows of weight 0 do not exist for the op (docs/math.md §0) ------------------------------------------------------

ZERO_WEIGHT_BACKENDS = [backend_param("reference")] + backend_params()


def _run(backend, student, teacher, weight, beta, normalize):
    s = student.detach().clone().requires_grad_()
    out = kdops.quality_focal_kd(s, teacher, weight=weight, beta=beta, normalize=normalize, backend=backend)
    (grad,) = torch.autograd.grad(out * 1.5, s)
    return out.detach(), grad


@pytest.mark.parametrize("backend,device", ZERO_WEIGHT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rows_of_weight_zero_change_nothing(backend, device, dtype):
    """NaN, +Inf or -Inf in the student's or the teacher's logits of weight-0 rows: the same bits."""
    student, teacher = _logits((3, 4, 11), dtype, device, 8)
    weight = _weight((3, 4), device)
    zero = (weight == 0)[..., None]
    for beta, normalize in ((1.0, "sum"), (2.0, "weight"), (0.5, "mean")):
        expected = _run(backend, student, teacher, weight, beta, normalize)
        assert all(torch.isfinite(e).all() for e in expected)
        for side in ("student", "teacher"):
            for value in (float("nan"), float("inf"), float("-inf")):
                poisoned = dict(student=student, teacher=teacher)
                poisoned[side] = torch.where(zero, torch.full_like(student, value), poisoned[side])
                actual = _run(backend, poisoned["student"], poisoned["teacher"], weight, beta, normalize)
                for a, e in zip(actual, expected):
                    assert torch.equal(a, e), (backend, dtype, beta, side, value)


@pytest.mark.parametrize("backend,device", ZERO_WEIGHT_BACKENDS)
def test_nan_in_a_weighted_row_propagates(backend, device):
    student, teacher = _logits((6, 5), torch.float32, device, 9)
    teacher[2, 3] = float("nan")  # row 2 has weight 0.5
    out, grad = _run(backend, student, teacher, _weight((6,), device), 1.0, "mean")
    assert out.isnan() and grad[2, 3].isnan()
    assert torch.isfinite(grad[0]).all() and not grad[0].any()  # the row of weight 0 next to it


# Registration and compilation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("weighted,beta,normalize", [(False, 1.0, "mean"), (True, 0.5, "weight")])
def test_opcheck(backend, device, weighted, beta, normalize):
    op = registered_op("quality_focal_kd", backend)
    student, teacher = _logits((6, 7), torch.float32, device, 7)
    weight = _weight((6,), device).float() if weighted else None
    opcheck(op, (student.requires_grad_(), teacher, weight, beta, normalize))


def test_compile_fullgraph():
    weight = _weight((40,), "cpu").float()

    def loss_fn(student, teacher):
        return kdops.quality_focal_kd(student, teacher, weight=weight, normalize="weight")

    student, teacher = _logits((40, 9), torch.float32, "cpu", 10)
    assert_compiles_like_eager(loss_fn, student.requires_grad_(), teacher)


@pytest.mark.parametrize("backend", on_cpu("cpu", "triton"))
def test_a_raw_call_with_a_teacher_that_requires_grad_raises_in_backward(backend):
    student, teacher = _logits((3, 4), torch.float32, "cpu", 11)
    out = registered_op("quality_focal_kd", backend)(student.requires_grad_(), teacher.requires_grad_(), None, 1.0,
                                                    "mean")[0]
    with pytest.raises(RuntimeError, match="teacher_logits must not require grad"):
        out.backward()


@pytest.mark.parametrize("backend", on_cpu("cpu"))
def test_double_backward_names_the_op(backend):
    student, teacher = _logits((3, 4), torch.float64, "cpu", 13)
    student.requires_grad_()
    (g,) = torch.autograd.grad(kdops.quality_focal_kd(student, teacher, backend=backend), student, create_graph=True)
    with pytest.raises(RuntimeError, match="kdops.quality_focal_kd: double backward"):
        torch.autograd.grad((g * g).sum(), student)


# Bad input ---------------------------------------------------------------------------------------------------------

X = torch.randn(4, 5)
T_GRAD = torch.randn(4, 5, requires_grad=True)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(4, 6)), {}, ValueError, "student_logits and teacher_logits must have the same shape"),
    ((X, X.half()), {}, TypeError, "must have the same dtype"),
    ((X.int(), X.int()), {}, TypeError, "student_logits must be float16"),
    ((X, X.numpy()), {}, TypeError, "teacher_logits must be a torch.Tensor"),
    ((torch.tensor(1.0), torch.tensor(1.0)), {}, ValueError, r"student_logits must be \(..., C\) with C >= 1"),
    ((torch.randn(4, 0), torch.randn(4, 0)), {}, ValueError, r"must be \(..., C\) with C >= 1 classes"),
    ((X, T_GRAD), {}, ValueError, "teacher_logits gets no gradient"),
    ((X, X), {"weight": torch.ones(5)}, ValueError, r"weight must have the rows' shape \(4,\)"),
    ((X, X), {"weight": torch.ones(4, dtype=torch.long)}, TypeError, "weight must be float16"),
    ((X, X), {"weight": torch.ones(4, requires_grad=True)}, ValueError, "weight must not require grad"),
    ((X, X), {"beta": -0.5}, ValueError, "beta must be a number >= 0"),
    ((X, X), {"beta": float("inf")}, ValueError, "beta must be a finite number"),
    ((X, X), {"beta": "1"}, ValueError, "beta must be a finite number"),
    ((X, X), {"normalize": "batch"}, ValueError, r"normalize must be one of \('sum', 'mean', 'weight'\)"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.quality_focal_kd(*args, **kwargs)


@pytest.mark.parametrize("backend", on_cpu("cpu"))
def test_raw_native_call_checks_its_arguments(backend):
    op = registered_op("quality_focal_kd", backend)
    with pytest.raises(RuntimeError, match="normalize must be one of"):
        op(X, X, None, 1.0, "batch")
    with pytest.raises(RuntimeError, match="beta must be a number >= 0"):
        op(X, X, None, -1.0, "sum")
    with pytest.raises(RuntimeError, match=r"weight must have shape \(rows,\)"):
        op(X, X, torch.ones(3), 1.0, "sum")


def test_dtypes_of_the_results():
    for dtype in DTYPES + (torch.float64,):
        student, teacher = _logits((5, 3), dtype, "cpu", 12)
        out = kdops.quality_focal_kd(student.requires_grad_(), teacher, backend="reference")
        out.backward()
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert student.grad.dtype == dtype
