"""kdops.soft_binary_cross_entropy (docs/math.md §7, RPN objectness): every backend against the reference,
gradients, registration, numerical stability, bad input."""

import itertools

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import soft_binary_cross_entropy as reference
from support import parity
from support.backends import backends_on_cpu, on_cpu, opcheck_params, registered_op
from support.numerics import assert_compiles_like_eager, randn

MODES = list(itertools.product((False, True), (1.0, 2.0)))  # (with target, temperature)
WEIGHTS = dict(pos_weight=1.0, neg_weight=1.5)
MU = 0.3


def _inputs(shape, dtype, device, seed, with_target):
    student = (4 * randn(shape, torch.float64, device, seed)).to(dtype)
    teacher = (4 * randn(shape, torch.float64, device, seed + 1)).to(dtype)
    target = None
    if with_target:  # torchvision RPN labels: 1 object, 0 background, -1 not sampled
        g = torch.Generator().manual_seed(seed + 2)
        target = torch.randint(-1, 2, shape, generator=g).to(device)
    return student, teacher, target


def _case_inputs(case, dtype, device):
    with_target, temperature = case.mode
    student, teacher, target = _inputs(case.shape, dtype, device, case.seed, with_target)
    return dict(student_logits=student.requires_grad_(), teacher_logits=teacher, target=target,
                temperature=temperature, mu=MU, **WEIGHTS)


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.soft_binary_cross_entropy(**a, backend=backend),),
    expected=lambda student_logits, teacher_logits, **a: reference.soft_binary_cross_entropy(
        student_logits, teacher_logits, **a)[:1],
    shapes=[(1,), (4097,), (2, 3, 13, 21), (1, 1)], small_shapes=[(1,), (1500,), (2, 3, 5, 7)], modes=MODES,
    strided=("student_logits", "teacher_logits"))


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("with_target,temperature", MODES)
def test_reference_closed_form_backward_matches_autograd(with_target, temperature):
    student, teacher, target = _inputs((5, 7), torch.float64, "cpu", 3, with_target)
    student.requires_grad_()
    out, norm = reference.soft_binary_cross_entropy(student, teacher, target=target, pos_weight=1.0, neg_weight=1.5,
                                                    temperature=temperature, mu=MU)
    expected = torch.autograd.grad(out * 1.7, student)[0]
    closed = reference.soft_binary_cross_entropy_backward(torch.tensor(1.7, dtype=torch.float64), student.detach(),
                                                          teacher, target, norm, 1.0, 1.5, temperature, MU, -1)
    torch.testing.assert_close(closed, expected)


def test_reference_equals_torch_bce_with_logits():
    student, teacher, target = _inputs((50,), torch.float64, "cpu", 4, True)
    kept = target >= 0
    out, _ = reference.soft_binary_cross_entropy(student, teacher, target=target, neg_weight=1.0, mu=1.0)
    torch.testing.assert_close(out, torch.nn.functional.binary_cross_entropy_with_logits(
        student[kept], target[kept].double()))
    soft, _ = reference.soft_binary_cross_entropy(student, teacher, neg_weight=1.0)
    torch.testing.assert_close(soft, torch.nn.functional.binary_cross_entropy_with_logits(
        student, torch.sigmoid(teacher)))


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
@pytest.mark.parametrize("with_target,temperature", MODES)
def test_gradcheck_float64(backend, with_target, temperature):
    student, teacher, target = _inputs((3, 7), torch.float64, "cpu", 5, with_target)
    student.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: kdops.soft_binary_cross_entropy(
        s, teacher, temperature=temperature, target=target, mu=MU, backend=backend, **WEIGHTS), (student,))


@pytest.mark.parametrize("backend,device", opcheck_params())
@pytest.mark.parametrize("with_target", [False, True])
def test_opcheck(backend, device, with_target):
    op = registered_op("soft_binary_cross_entropy", backend)
    student, teacher, target = _inputs((3, 7), torch.float32, device, 7, with_target)
    opcheck(op, (student.requires_grad_(), teacher, target, 1.0, 1.5, 2.0, MU, -1))


def test_compile_fullgraph():
    def loss_fn(student, teacher, target):
        return kdops.soft_binary_cross_entropy(student, teacher, target=target, mu=0.5)

    student, teacher, target = _inputs((40,), torch.float32, "cpu", 9, True)
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, target)



def test_huge_logits_are_finite_and_correct():
    s = torch.tensor([1e4, -1e4, 80.0, -80.0, 0.0], requires_grad=True)
    t = torch.tensor([-1e4, 1e4, -90.0, 90.0, 3.0])
    y = torch.tensor([1, 0, 0, 1, 1])
    expected = reference.soft_binary_cross_entropy(s.detach().double(), t.double(), target=y, mu=0.5)[0]
    for backend in backends_on_cpu():
        s.grad = None
        out = kdops.soft_binary_cross_entropy(s, t, target=y, mu=0.5, backend=backend)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all(), backend
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-2)


def test_ignored_anchors_and_bad_labels():
    s, t = torch.randn(6), torch.randn(6)
    for backend in backends_on_cpu():
        out = kdops.soft_binary_cross_entropy(s, t, target=torch.full((6,), -1), mu=0.5, backend=backend)
        assert out.item() == 0.0, backend
    bad = torch.tensor([0, 1, 2, -1, 0, 1])
    if kdops.available_backends()["cpu"] == "available":
        with pytest.raises(RuntimeError, match="target element 2 = 2 is neither 0, 1 nor ignore_index"):
            kdops.soft_binary_cross_entropy(s, t, target=bad, backend="cpu")
    for backend in set(backends_on_cpu()) - {"cpu"}:  # documented: NaN instead of a host sync
        assert torch.isnan(kdops.soft_binary_cross_entropy(s, t, target=bad, backend=backend)), backend


def test_nan_logit_gives_nan_unless_ignored():
    s, t = torch.randn(4), torch.randn(4)
    s[2] = float("nan")
    for backend in backends_on_cpu():
        assert torch.isnan(kdops.soft_binary_cross_entropy(s, t, backend=backend)), backend
        out = kdops.soft_binary_cross_entropy(s, t, target=torch.tensor([0, 1, -1, 1]), backend=backend)
        assert torch.isfinite(out), backend


X = torch.randn(4, 5)
T_GRAD = torch.randn(4, 5, requires_grad=True)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((X, torch.randn(4, 6)), {}, ValueError, "student_logits and teacher_logits must have the same shape"),
    ((X, X.half()), {}, TypeError, "must have the same dtype"),
    ((X.int(), X.int()), {}, TypeError, "student_logits must be float16"),
    ((X, T_GRAD), {}, ValueError, "teacher_logits gets no gradient"),
    ((X, X), {"target": torch.zeros(4, dtype=torch.long)}, ValueError, r"target must have shape \(4, 5\)"),
    ((X, X), {"target": torch.zeros(4, 5)}, TypeError, "target must be an integer tensor"),
    ((X, X), {"temperature": -1}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"temperature": 1e-39}, ValueError, "temperature must be a finite number >= 1e-30"),
    ((X, X), {"neg_weight": float("inf")}, ValueError, "neg_weight must be a finite number"),
    ((X, X), {"mu": -0.1}, ValueError, r"mu must be a number in \[0, 1\]"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.soft_binary_cross_entropy(*args, **kwargs)
