"""kdops.ld_loss (docs/math.md §11): every backend against the reference, the official formula, gradients,
registration, the weight-0 rule, empty inputs, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import kdops
from kdops.reference import ld_loss as reference
from support import parity
from support.backends import backend_param, backend_params, backends_on_cpu, on_cpu, opcheck_params, registered_op
from support.backends import require_backend
from support.numerics import assert_compiles_like_eager, randn

NORMALIZERS = ("sum", "mean", "weight")
# (temperature, with weights, normalize, teacher close to the student): T = 10 is the official value; a close
# teacher makes most rows take the near (exact series) form at T = 10.
MODES = [(10.0, True, "sum", False), (10.0, True, "weight", True), (1.0, False, "mean", False),
         (2.0, True, "mean", True)]


def _inputs(shape, dtype, device, seed, with_weight=True, close=False):
    """Logits and weights: about one row in four of weight 0, the others in [0.1, 1.1)."""
    rows = shape[0]
    student = 3 * randn(shape, torch.float64, device, seed)
    noise = randn(shape, torch.float64, device, seed + 1)
    teacher = student + 0.2 * noise if close else 3 * noise
    weight = None
    if with_weight:
        g = torch.Generator().manual_seed(seed + 2)
        weight = 0.1 + torch.rand(rows, generator=g, dtype=torch.float64)
        weight[torch.rand(rows, generator=g) < 0.25] = 0.0
        weight = weight.to(device)
    return student.to(dtype), teacher.to(dtype), weight


def _case_inputs(case, dtype, device):
    temperature, with_weight, normalize, close = case.mode
    student, teacher, weight = _inputs(case.shape, dtype, device, case.seed, with_weight, close)
    return dict(student_logits=student.requires_grad_(), teacher_logits=teacher,
                weight=None if weight is None else weight.float(), temperature=temperature, normalize=normalize)


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.ld_loss(**a, backend=backend),),
    expected=lambda student_logits, teacher_logits, **a: reference.ld_loss(student_logits, teacher_logits, **a)[:1],
    # 17 bins (GFL), 16 (Ultralytics), 15 and 33: around the CPU kernels' 16-wide blocks; 1 bin; long rows.
    shapes=[(1, 17), (37, 17), (64, 16), (5, 1), (4, 15), (3, 33), (2, 1000), (300, 17)],
    small_shapes=[(9, 17), (5, 16), (3, 33), (2, 1)], modes=MODES,
    strided=("student_logits", "teacher_logits"))


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("temperature,with_weight,normalize,close", MODES)
def test_reference_closed_form_backward_matches_autograd(temperature, with_weight, normalize, close):
    student, teacher, weight = _inputs((11, 17), torch.float64, "cpu", 3, with_weight, close)
    student.requires_grad_()
    out, norm = reference.ld_loss(student, teacher, weight=weight, temperature=temperature, normalize=normalize)
    expected = torch.autograd.grad(out * 1.7, student)[0]
    closed = reference.ld_loss_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(), teacher, weight,
                                        norm, temperature)
    torch.testing.assert_close(closed, expected)


def _official(pred, soft_label, weight, temperature, avg_factor=None):
    """The official code's loss, written out: KL per row averaged over the bins times T^2, times the weight, then
    mmdet's reduction (the sum / avg_factor, or the mean over rows without one)."""
    kl = F.kl_div(F.log_softmax(pred / temperature, dim=1), F.softmax(soft_label / temperature, dim=1),
                  reduction="none").mean(1) * (temperature * temperature)
    kl = kl * weight
    return kl.mean() if avg_factor is None else kl.sum() / avg_factor


@pytest.mark.parametrize("close", [False, True])
def test_reference_is_the_official_loss(close):
    student, teacher, weight = _inputs((40, 17), torch.float64, "cpu", 4, True, close)
    for backend in ["reference"] + backends_on_cpu():
        kw = dict(weight=weight, temperature=10.0, backend=backend)
        torch.testing.assert_close(kdops.ld_loss(student, teacher, normalize="sum", **kw) / 4.0,
                                   _official(student, teacher, weight, 10.0, avg_factor=4.0), msg=backend)
        torch.testing.assert_close(kdops.ld_loss(student, teacher, normalize="mean", **kw),
                                   _official(student, teacher, weight, 10.0), msg=backend)
        torch.testing.assert_close(kdops.ld_loss(student, teacher, normalize="weight", **kw),
                                   _official(student, teacher, weight, 10.0, avg_factor=weight.sum()), msg=backend)


def test_weight_normalisation_is_ultralytics_dfl_form():
    """One weight per anchor repeated on its 4 edges: the weighted mean is sum_a w_a mean_e l_ae / sum_a w_a."""
    anchors, bins = 30, 16
    student, teacher, _ = _inputs((anchors * 4, bins), torch.float64, "cpu", 5)
    w_anchor = torch.rand(anchors, dtype=torch.float64) * (torch.rand(anchors) > 0.5)
    per_edge = F.kl_div(F.log_softmax(student / 2.0, dim=1), F.softmax(teacher / 2.0, dim=1),
                        reduction="none").mean(1) * 4.0
    expected = (per_edge.view(anchors, 4).mean(1) * w_anchor).sum() / w_anchor.sum()
    for backend in ["reference"] + backends_on_cpu():
        out = kdops.ld_loss(student, teacher, weight=w_anchor.repeat_interleave(4), temperature=2.0,
                            normalize="weight", backend=backend)
        torch.testing.assert_close(out, expected, msg=backend)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("temperature,close", [(10.0, False), (10.0, True), (1.0, False), (1e3, False)])
@pytest.mark.parametrize("normalize", NORMALIZERS)
def test_gradcheck_float64(backend, temperature, close, normalize):
    student, teacher, weight = _inputs((6, 17), torch.float64, "cpu", 6, True, close)
    student.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: kdops.ld_loss(s, teacher, weight=weight, temperature=temperature, normalize=normalize,
                                backend=backend), (student,))


@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("with_weight,normalize", [(False, "mean"), (True, "weight")])
def test_opcheck(backend, device, with_weight, normalize):
    op = registered_op("ld_loss", backend)
    student, teacher, weight = _inputs((6, 17), torch.float32, device, 7, with_weight)
    weight = None if weight is None else weight.float()
    opcheck(op, (student.requires_grad_(), teacher, weight, 10.0, normalize))


def test_compile_fullgraph():
    def loss_fn(student, teacher, weight):
        return kdops.ld_loss(student, teacher, weight=weight, normalize="weight")

    student, teacher, weight = _inputs((16, 17), torch.float32, "cpu", 9)
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, weight.float())


def _exact(student, teacher, weight, temperature):
    """ld_loss ("sum") and its gradient (grad = 1) in 80-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(80):
        tau, bins = mpmath.mpf(temperature), student.shape[1]
        total, grads = 0, []
        for s_row, t_row, w in zip(student.tolist(), teacher.tolist(), weight.tolist()):
            a, b = [mpmath.mpf(x) / tau for x in s_row], [mpmath.mpf(x) / tau for x in t_row]
            ls, lt = mpmath.log(mpmath.fsum(map(mpmath.exp, a))), mpmath.log(mpmath.fsum(map(mpmath.exp, b)))
            kl = mpmath.fsum(mpmath.exp(y - lt) * ((y - lt) - (x - ls)) for x, y in zip(a, b))
            total += mpmath.mpf(w) * kl * tau * tau / bins
            grads += [mpmath.mpf(w) * tau / bins * (mpmath.exp(x - ls) - mpmath.exp(y - lt)) for x, y in zip(a, b)]
        return float(total), torch.tensor([float(g) for g in grads], dtype=torch.float64).reshape(student.shape)


@pytest.mark.parametrize("temperature", [1e-3, 10.0, 1e3, 1e20])
def test_extreme_temperatures_are_exact(temperature):
    """CWD's row math: a near row (small spread against T) keeps its second-order KL (docs/math.md §6)."""
    student, teacher = randn((5, 17), torch.float64, "cpu", 11) * 3, randn((5, 17), torch.float64, "cpu", 12)
    weight = torch.tensor([1.0, 0.5, 2.0, 0.25, 1.5], dtype=torch.float64)
    loss, grad = _exact(student, teacher, weight, temperature)
    for backend in backends_on_cpu():
        for dtype in (torch.float64,) if backend == "reference" else (torch.float32, torch.float64):
            s = student.detach().to(dtype).requires_grad_()
            out = kdops.ld_loss(s, teacher.to(dtype), weight=weight, temperature=temperature, normalize="sum",
                                backend=backend)
            out.backward()
            rtol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(out.double(), torch.tensor(loss, dtype=torch.float64), rtol=rtol, atol=0,
                                       msg=f"{backend} {dtype}")
            torch.testing.assert_close(s.grad.double(), grad, rtol=0, atol=rtol * grad.abs().max().item(),
                                       msg=f"{backend} {dtype}")


# A row of weight 0 does not exist for the op (docs/math.md §0) ---------------------------------------------------

BACKENDS = [backend_param("reference")] + backend_params()
BAD = (float("nan"), float("inf"), float("-inf"))


def _loss_and_grad(student, teacher, weight, backend, normalize):
    s = student.detach().clone().requires_grad_()
    out = kdops.ld_loss(s, teacher, weight=weight, temperature=2.0, normalize=normalize, backend=backend)
    (grad,) = torch.autograd.grad(1.5 * out, s)
    return out.detach(), grad


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rows_of_weight_zero_change_nothing_whatever_they_hold(backend, device, dtype):
    student, teacher, weight = _inputs((13, 17), dtype, device, 21)
    weight = weight.float() if dtype != torch.float64 else weight
    zero = (weight == 0)[:, None]
    assert zero.any() and not zero.all()
    for normalize in NORMALIZERS:
        expected = _loss_and_grad(student, teacher, weight, backend, normalize)
        assert all(torch.isfinite(x).all() for x in expected)
        assert not expected[1][zero.expand_as(student)].any()
        for value in BAD:
            for side in ("student", "teacher"):
                dirty = dict(student=student, teacher=teacher)
                dirty[side] = torch.where(zero, torch.full_like(student, value), dirty[side])
                actual = _loss_and_grad(dirty["student"], dirty["teacher"], weight, backend, normalize)
                for a, e in zip(actual, expected):
                    assert torch.equal(a, e), f"{backend} {dtype} {normalize}: {side} = {value} in a weight-0 row"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_nan_in_a_weighted_row_propagates(backend, device, side):
    student, teacher, weight = _inputs((12, 17), torch.float32, device, 3)
    weight = weight.float()
    row = int((weight > 0).nonzero()[0])
    free = int((weight == 0).nonzero()[0])
    inputs = dict(student=student, teacher=teacher)
    inputs[side][row, 5] = float("nan")
    s = inputs["student"].requires_grad_()
    out = kdops.ld_loss(s, inputs["teacher"], weight=weight, backend=backend)
    assert out.isnan()
    out.backward()
    assert s.grad[row].isnan().any()
    assert not s.grad[free].any()  # a row of weight 0 next to it stays exactly 0


def test_normalisers():
    student, teacher, _ = _inputs((8, 17), torch.float64, "cpu", 13)
    weight = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.5, 0.5, 0.0, 1.0], dtype=torch.float64)
    for backend in ["reference"] + backends_on_cpu():
        total = kdops.ld_loss(student, teacher, weight=weight, normalize="sum", backend=backend)
        torch.testing.assert_close(kdops.ld_loss(student, teacher, weight=weight, normalize="mean", backend=backend),
                                   total / 8, msg=backend)  # every row counts, weight 0 included
        torch.testing.assert_close(kdops.ld_loss(student, teacher, weight=weight, normalize="weight",
                                                 backend=backend), total / 5, msg=backend)
        zeros = torch.zeros(8, dtype=torch.float64)
        for normalize in NORMALIZERS:  # Z = 0 (or nothing weighted) gives 0, and a zero gradient
            s = student.clone().requires_grad_()
            out = kdops.ld_loss(s, teacher, weight=zeros, normalize=normalize, backend=backend)
            out.backward()
            assert out.item() == 0.0 and not s.grad.any(), (backend, normalize)


@pytest.mark.parametrize("normalize", NORMALIZERS)
@pytest.mark.parametrize("with_weight", [False, True])
def test_empty_input_is_zero_and_connected(normalize, with_weight):
    for backend in ["reference"] + backends_on_cpu():
        s = torch.zeros(0, 17, requires_grad=True)
        weight = torch.zeros(0) if with_weight else None
        out = kdops.ld_loss(s, torch.zeros(0, 17), weight=weight, normalize=normalize, backend=backend)
        assert out.shape == () and out.item() == 0.0 and out.grad_fn is not None, backend
        (grad,) = torch.autograd.grad(out, s)
        assert grad.shape == (0, 17), backend


def test_identical_logits_give_zero_and_large_logits_stay_finite():
    s = torch.randn(20, 17) * 1e3
    for backend in backends_on_cpu():
        assert kdops.ld_loss(s, s.clone(), backend=backend).abs().item() < 1e-6, backend
        out = kdops.ld_loss(s, s.flip(-1), backend=backend)
        torch.testing.assert_close(out.double(), reference.ld_loss(s.double(), s.flip(-1).double())[0],
                                   rtol=1e-5, atol=1e-2)


def test_teacher_requiring_grad_is_rejected():
    t = torch.randn(3, 17, requires_grad=True)
    with pytest.raises(ValueError, match="teacher_logits gets no gradient.*detach"):
        kdops.ld_loss(torch.randn(3, 17), t)
    assert kdops.ld_loss(torch.randn(3, 17), t.detach()).shape == ()


X = torch.randn(4, 17)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(4, 16)), {}, ValueError, "student_logits and teacher_logits must have the same shape"),
    ((X, X.double()), {}, TypeError, "student_logits and teacher_logits must have the same dtype"),
    ((X.long(), X.long()), {}, TypeError, "student_logits must be float16"),
    ((X, X.numpy()), {}, TypeError, "teacher_logits must be a torch.Tensor"),
    ((X, X.clone().requires_grad_()), {}, ValueError, r"teacher_logits gets no gradient.*detach"),
    ((X[0], X[0]), {}, ValueError, r"student_logits must be a 2-D \(rows, bins\)"),
    ((torch.zeros(4, 0), torch.zeros(4, 0)), {}, ValueError, "the logits need at least one bin"),
    ((X, X), {"weight": torch.ones(3)}, ValueError, r"weight must have shape \(4,\)"),
    ((X, X), {"weight": torch.ones(4, dtype=torch.long)}, TypeError, "weight must be float16"),
    ((X, X), {"weight": torch.ones(4, requires_grad=True)}, ValueError, "weight gets no gradient"),
    ((X, X), {"temperature": 0.0}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": -10}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": float("nan")}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": float("inf")}, ValueError, r"temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": 1e-31}, ValueError, r"temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": "10"}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"normalize": "avg_factor"}, ValueError, r"normalize must be one of \('sum', 'mean', 'weight'\)"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.ld_loss(*args, **kwargs)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match=r"weight must have shape \(rows,\)"):
        torch.ops.kdops.ld_loss(X, X, torch.ones(3), 10.0, "sum")
    with pytest.raises(RuntimeError, match="temperature must be a finite number"):
        torch.ops.kdops.ld_loss(X, X, None, float("inf"), "sum")
    with pytest.raises(RuntimeError, match=r"normalize must be one of \('sum', 'mean', 'weight'\), got 'avg'"):
        torch.ops.kdops.ld_loss(X, X, None, 10.0, "avg")


@require_backend("cpu")
def test_direct_call_with_a_teacher_that_requires_grad_names_it():
    out = torch.ops.kdops.ld_loss(X.clone().requires_grad_(), X.clone().requires_grad_(), None, 10.0, "sum")[0]
    with pytest.raises(RuntimeError, match="teacher_logits.*detach"):
        out.backward()
