"""kdops.soft_cross_entropy (docs/math.md §7): every backend against the reference, gradients, registration,
bad input."""

import itertools

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import soft_cross_entropy as reference
from support import parity
from support.backends import backends_on_cpu, on_cpu, opcheck_params, registered_op, require_backend
from support.numerics import assert_compiles_like_eager, randn

# (with target, temperature, class weights)
MODES = list(itertools.product((False, True), (1.0, 2.0), (False, True)))
MU = 0.3


def _inputs(shape, dtype, device, seed, with_target, with_weight):
    rows, classes = shape
    student = (3 * randn(shape, torch.float64, device, seed)).to(dtype)
    teacher = (3 * randn(shape, torch.float64, device, seed + 1)).to(dtype)
    g = torch.Generator().manual_seed(seed + 2)
    weight = (0.5 + torch.rand(classes, generator=g, dtype=torch.float64)).to(device) if with_weight else None
    target = None
    if with_target:  # about one row in four ignored
        target = torch.randint(0, classes, (rows,), generator=g)
        target[torch.rand(rows, generator=g) < 0.25] = -1
        target = target.to(device)
    return student, teacher, weight, target


def _case_inputs(case, dtype, device):
    with_target, temperature, with_weight = case.mode
    student, teacher, weight, target = _inputs(case.shape, dtype, device, case.seed, with_target, with_weight)
    return dict(student_logits=student.requires_grad_(), teacher_logits=teacher, target=target,
                class_weight=None if weight is None else weight.to(torch.float32), temperature=temperature, mu=MU)


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.soft_cross_entropy(**a, backend=backend),),
    expected=lambda student_logits, teacher_logits, **a: reference.soft_cross_entropy(
        student_logits, teacher_logits, **a)[:1],
    # 15, 16, 17, 33 classes: around the CPU kernels' 16-wide blocks (a row's last block overlaps the one before).
    shapes=[(1, 91), (37, 91), (5, 1000), (64, 3), (1, 1), (4, 15), (2, 16), (7, 17), (3, 33)],
    small_shapes=[(1, 91), (9, 91), (3, 1000), (5, 3)], modes=MODES,
    strided=("student_logits", "teacher_logits"))


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("with_target,temperature,with_weight", MODES)
def test_reference_closed_form_backward_matches_autograd(with_target, temperature, with_weight):
    student, teacher, weight, target = _inputs((11, 7), torch.float64, "cpu", 3, with_target, with_weight)
    student.requires_grad_()
    out, norm = reference.soft_cross_entropy(student, teacher, class_weight=weight, target=target,
                                             temperature=temperature, mu=MU)
    expected = torch.autograd.grad(out * 1.7, student)[0]
    closed = reference.soft_cross_entropy_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(), teacher,
                                                   weight, target, norm, temperature, MU, -1)
    torch.testing.assert_close(closed, expected)


def test_reference_equals_torch_cross_entropy():
    """mu = 1 is the plain CE with ignore_index; mu = 0, w = 1, one-hot teacher is CE too."""
    student, teacher, _, target = _inputs((20, 9), torch.float64, "cpu", 4, True, False)
    out, _ = reference.soft_cross_entropy(student, teacher, target=target, mu=1.0)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(student, target, ignore_index=-1))
    soft, _ = reference.soft_cross_entropy(student, teacher, temperature=2.0)
    torch.testing.assert_close(soft, torch.nn.functional.cross_entropy(
        student / 2, torch.softmax(teacher / 2, dim=1)))


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("with_target,temperature,with_weight", MODES)
@pytest.mark.parametrize("shape", [(6, 5), (3, 19)])
def test_gradcheck_float64(backend, with_target, temperature, with_weight, shape):
    student, teacher, weight, target = _inputs(shape, torch.float64, "cpu", 5, with_target, with_weight)
    student.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: kdops.soft_cross_entropy(s, teacher, class_weight=weight, target=target, temperature=temperature,
                                           mu=MU, backend=backend), (student,))


@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("with_target,with_weight", [(False, False), (True, True)])
def test_opcheck(backend, device, with_target, with_weight):
    op = registered_op("soft_cross_entropy", backend)
    student, teacher, weight, target = _inputs((6, 5), torch.float32, device, 7, with_target, with_weight)
    weight = None if weight is None else weight.float()
    opcheck(op, (student.requires_grad_(), teacher, weight, target, 2.0, MU, -1))


def test_compile_fullgraph():
    def loss_fn(student, teacher, weight, target):
        return kdops.soft_cross_entropy(student, teacher, class_weight=weight, target=target, mu=0.5)

    student, teacher, weight, target = _inputs((8, 6), torch.float32, "cpu", 9, True, True)
    weight = weight.float()
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, weight, target)



def test_all_rows_ignored_gives_zero_loss_and_gradient():
    for backend in backends_on_cpu():
        s = torch.randn(4, 5, requires_grad=True)
        out = kdops.soft_cross_entropy(s, torch.randn(4, 5), target=torch.full((4,), -1), mu=0.5, backend=backend)
        out.backward()
        assert out.item() == 0.0 and not s.grad.any(), backend


def test_custom_ignore_index_and_mean_over_kept_rows():
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 255, 1, 255, 2])
    kept = y != 255
    for backend in backends_on_cpu():
        out = kdops.soft_cross_entropy(s, t, target=y, ignore_index=255, backend=backend)
        torch.testing.assert_close(out, kdops.soft_cross_entropy(s[kept], t[kept], backend="reference"))


def test_out_of_range_target():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([0, 4, 1])
    if kdops.available_backends()["cpu"] == "available":
        with pytest.raises(RuntimeError, match=r"target\[1\] = 4 is outside \[0, 4\)"):
            kdops.soft_cross_entropy(s, t, target=y, backend="cpu")
    for backend in set(backends_on_cpu()) - {"cpu"}:  # documented: NaN instead of a host sync
        assert torch.isnan(kdops.soft_cross_entropy(s, t, target=y, backend=backend)), backend


def test_nan_logits_poison_only_kept_rows():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    s[1, 2] = float("nan")
    for backend in backends_on_cpu():
        assert torch.isnan(kdops.soft_cross_entropy(s, t, backend=backend)), backend
        out = kdops.soft_cross_entropy(s, t, target=torch.tensor([0, -1, 2]), backend=backend)
        assert torch.isfinite(out), backend


def test_large_logits_stay_finite():
    s = torch.tensor([[1e4, -1e4, 0.0], [300.0, 299.0, -5.0]])
    t = torch.tensor([[-1e4, 1e4, 0.0], [0.0, 80.0, 90.0]])
    expected = reference.soft_cross_entropy(s.double(), t.double(), target=torch.tensor([1, 0]), mu=0.5)[0]
    for backend in backends_on_cpu():
        out = kdops.soft_cross_entropy(s, t, target=torch.tensor([1, 0]), mu=0.5, backend=backend)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)


def test_teacher_requiring_grad_is_rejected():
    t = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="teacher_logits gets no gradient.*detach"):
        kdops.soft_cross_entropy(torch.randn(3, 4), t)
    assert kdops.soft_cross_entropy(torch.randn(3, 4), t.detach()).shape == ()


X = torch.randn(4, 5)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(4, 6)), {}, ValueError, "student_logits and teacher_logits must have the same shape"),
    ((X, torch.randn(3, 5)), {}, ValueError, "student_logits and teacher_logits must have the same shape"),
    ((X, X.double()), {}, TypeError, "must have the same dtype"),
    ((X.long(), X.long()), {}, TypeError, "student_logits must be float16"),
    ((X[0], X[0]), {}, ValueError, r"student_logits must be a 2-D \(rows, classes\)"),
    ((X, X), {"class_weight": torch.ones(4)}, ValueError, r"class_weight must have shape \(5,\)"),
    ((X, X), {"class_weight": torch.ones(5, requires_grad=True)}, ValueError, "class_weight gets no gradient"),
    ((X, X), {"target": torch.zeros(3, dtype=torch.long)}, ValueError, r"target must have shape \(4,\)"),
    ((X, X), {"target": torch.zeros(4)}, TypeError, "target must be an integer tensor"),
    ((X, X), {"temperature": 0.0}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"ignore_index": 2**70}, ValueError, r"ignore_index must be an int in \[-2\*\*63, 2\*\*63\)"),
    ((X, X), {"mu": 1.5}, ValueError, r"mu must be a number in \[0, 1\]"),
    ((X, X), {"ignore_index": 1.0}, TypeError, "ignore_index must be an int"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.soft_cross_entropy(*args, **kwargs)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match=r"class_weight must have shape \(classes,\)"):
        torch.ops.kdops.soft_cross_entropy(X, X, torch.ones(4), None, 1.0, 0.0, -1)
    with pytest.raises(RuntimeError, match=r"target must have shape \(rows,\)"):
        torch.ops.kdops.soft_cross_entropy(X, X, None, torch.zeros(3, dtype=torch.long), 1.0, 0.0, -1)
    with pytest.raises(RuntimeError, match="temperature must be a finite number >= 1e-30"):
        torch.ops.kdops.soft_cross_entropy(X, X, None, None, -1.0, 0.0, -1)
