"""kdops.fgd_focal_loss (docs/math.md §3): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import fgd_focal_loss as reference
from support import parity
from support.backends import on_cpu, opcheck_params, registered_op, require_backend
from support.fgd_inputs import focal_inputs as _inputs
from support.numerics import assert_compiles_like_eager, randn

WEIGHTS = dict(alpha=1.5, beta=0.7, gamma=2.0)  # all terms matter in the gradient


def _case_inputs(case, dtype, device):
    temperature = 0.5 if case.index % 2 == 0 else 0.8
    student, teacher, fg, bg = _inputs(case.shape, dtype, device, case.seed, temperature)
    return dict(student=student.requires_grad_(), teacher=teacher, fg=fg, bg=bg, temperature=temperature, **WEIGHTS)


PARITY = parity.Parity(
    inputs=_case_inputs,
    run=lambda backend, **a: kdops.fgd_focal_loss(**a, return_terms=True, backend=backend),
    expected=lambda student, teacher, **a: reference.fgd_focal_loss(student, teacher, **a),
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)],
    strided=("student", "teacher", "fg", "bg"), out_scale=1e3, grad_scale=10)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


def test_reference_closed_form_backward_matches_autograd():
    student, teacher, fg, bg = _inputs((2, 6, 5, 7), torch.float64, "cpu", 11, 0.7)
    student.requires_grad_()
    loss, terms = reference.fgd_focal_loss(student, teacher, fg=fg.double(), bg=bg.double(), temperature=0.7, **WEIGHTS)
    g_loss, g_terms = torch.tensor(1.3, dtype=torch.float64), randn((3,), torch.float64, "cpu", 12)
    expected = torch.autograd.grad(g_loss * loss + (g_terms * terms).sum(), student)[0]
    saved = reference.attention_grads(student.detach(), teacher, 0.7)
    closed = reference.fgd_focal_loss_backward(g_loss, g_terms, student.detach(), teacher, fg.double(), bg.double(),
                                               *saved, **WEIGHTS)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
def test_gradcheck_float64(backend):
    student, teacher, fg, bg = _inputs((2, 3, 4, 5), torch.float64, "cpu", 5, 0.6)
    student.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: kdops.fgd_focal_loss(s, teacher, fg=fg, bg=bg, temperature=0.6, **WEIGHTS, return_terms=True,
                                 backend=backend),
        (student,))


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("fgd_focal_loss", backend)
    student, teacher, fg, bg = _inputs((2, 3, 4, 5), torch.float32, device, 7, 0.5)
    opcheck(op, (student.requires_grad_(), teacher, fg, bg, 0.5, *WEIGHTS.values()))


def test_compile_fullgraph():
    def loss_fn(s, t, fg, bg):
        loss, terms = kdops.fgd_focal_loss(s, t, fg=fg, bg=bg, temperature=0.5, **WEIGHTS, return_terms=True)
        return loss + terms[2]

    student, teacher, fg, bg = _inputs((2, 4, 6, 5), torch.float32, "cpu", 9, 0.5)
    student.requires_grad_()
    assert_compiles_like_eager(loss_fn, student, teacher, fg, bg)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_empty_batch_gives_zero(backend):
    empty = torch.zeros(0, 4, 3, 5)
    loss = kdops.fgd_focal_loss(empty, empty, fg=torch.zeros(0, 3, 5), bg=torch.zeros(0, 3, 5), backend=backend)
    assert loss.item() == 0


def test_does_not_write_into_the_inputs():
    student, teacher, fg, bg = _inputs((2, 3, 4, 5), torch.float32, "cpu", 1, 0.5)
    student.requires_grad_()
    before = [x.detach().clone() for x in (student, teacher, fg, bg)]
    kdops.fgd_focal_loss(student, teacher, fg=fg, bg=bg).backward()
    assert all(torch.equal(x.detach(), b) for x, b in zip((student, teacher, fg, bg), before))


def _bad(**change):
    args = dict(student=torch.randn(2, 3, 4, 5), teacher=torch.randn(2, 3, 4, 5), fg=torch.zeros(2, 4, 5),
                bg=torch.ones(2, 4, 5) / 20)
    args.update(change)
    return args


@pytest.mark.parametrize("args,kwargs,error,match", [
    (_bad(teacher=torch.randn(2, 3, 4, 5, requires_grad=True)), {}, ValueError, "teacher must not require grad"),
    (_bad(fg=torch.zeros(2, 5, 4)), {}, ValueError, r"fg must have shape \(N, H, W\) = \(2, 4, 5\)"),
    (_bad(bg=torch.zeros(2, 4, 5, device="meta")), {}, ValueError, "bg must be on cpu"),
    (_bad(fg=torch.zeros(2, 4, 5, requires_grad=True)), {}, ValueError, "fg is a constant weight map"),
    (_bad(student=torch.randn(3, 4, 5)), {}, ValueError, "student must be a 4-D"),
    (_bad(teacher=torch.randn(2, 3, 4, 5, dtype=torch.float64)), {}, TypeError, "must have the same dtype"),
    (_bad(teacher=torch.randn(2, 3, 4, 6)), {}, ValueError, "must have the same shape"),
    (_bad(), {"temperature": 0.0}, ValueError, "temperature must be a finite number >= 1e-30"),
    (_bad(), {"temperature": 1e-39}, ValueError, "temperature must be a finite number >= 1e-30"),
    (_bad(), {"alpha": float("nan")}, ValueError, "alpha must be a finite number"),
    (_bad(), {"backend": "cuda"}, kdops.BackendUnavailableError, "backend 'cuda' cannot run"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.fgd_focal_loss(**args, **kwargs)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    s = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="fg must have shape"):
        torch.ops.kdops.fgd_focal_loss(s, s, torch.zeros(2, 5, 4), torch.zeros(2, 4, 5), 0.5, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="bg must be Float for Float features"):
        torch.ops.kdops.fgd_focal_loss(s, s, torch.zeros(2, 4, 5), torch.zeros(2, 4, 5, dtype=torch.float64), 0.5,
                                       1.0, 1.0, 1.0)
