"""kdops.fgd_feature_pass (docs/math.md §3-§4): every fused kernel against the reference (fgd_focal_loss and two
gc_context calls), gradients, registration, bad input, and FGDLoss taking it on every backend."""

import dataclasses

import pytest
import torch
from torch.library import opcheck

import kdops
import kdops.nn.fgd
from kdops.reference import fgd_feature_pass as reference
from support import parity
from support.backends import backend_params, opcheck_params, registered_op, require_backend
from support.fgd_inputs import focal_inputs, random_boxes
from support.numerics import DTYPES, assert_compiles_like_eager, randn

pytestmark = require_backend("cpu")

# (2, 1030, 9, 31) and (2, 300, 23, 29) cut each image into several CPU pixel blocks, the last one partial
# (fp32: 127 and 436 pixels). CUDA tiles are 64 pixels (two per lane) with the channels split over 8 warps:
# fewer channels than warps, a partial last tile, exactly two tiles, a second tile or lane slot with one pixel,
# and (1, 2, 97, 89) / (2, 2, 97, 89): more tiles than a merge warp has lanes, more pixels than a row block has
# threads.
SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (2, 1030, 9, 31), (2, 300, 23, 29),
          (2, 9, 8, 16), (1, 16, 4, 8), (1, 5, 5, 13), (1, 2, 97, 89), (2, 2, 97, 89)]
# For the Triton interpreter (several tiles of 128) and the CUDA emulator: a partial last tile with fewer channels
# than warps; one pixel; uneven channels per warp and a last tile whose second lane slots are empty; more channels
# than a row block has threads; 34 tiles (more than a warp's lanes) and more pixels than a row block's threads.
SMALL_SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (2, 33, 13, 11), (1, 257, 1, 1), (1, 2, 47, 45)]
WEIGHTS = (1.5, 0.7, 2.0)  # alpha, beta, gamma: all terms matter in the gradient


def _convs(c, acc, seed, device="cpu"):
    """(student weight, student bias, teacher weight, teacher bias), the weights requiring grad."""
    ws, wt = (randn((c,), acc, device, seed + i) / c ** 0.5 for i in (0, 1))
    bs, bt = (randn((1,), acc, device, seed + i) for i in (2, 3))
    return ws.requires_grad_(), bs.requires_grad_(), wt.requires_grad_(), bt


def _args(fg, bg, convs, temperature=0.5, weights=(1e-3, 5e-4, 5e-4)):
    """fgd_feature_pass' keyword arguments after (student, teacher)."""
    (ws, bs, wt, bt), (alpha, beta, gamma) = convs, weights
    return dict(fg=fg, bg=bg, student_gc_weight=ws, student_gc_bias=bs, teacher_gc_weight=wt, teacher_gc_bias=bt,
                temperature=temperature, alpha=alpha, beta=beta, gamma=gamma)


def _objective(out, seed):
    """A grad_output other than 1 on every one of the six outputs."""
    total = 0
    for i, o in enumerate(out):
        total = total + (o.double() * randn(o.shape, torch.float64, o.device, seed + 10 + i)).sum()
    return total


def _case_inputs(case, dtype, device):
    """float64 features keep float64 GcBlock weights (and Triton float64 scalars); other dtypes float32 ones."""
    temperature = 0.5 if case.index % 2 == 0 else 0.8
    student, teacher, fg, bg = focal_inputs(case.shape, dtype, device, case.seed, temperature)
    convs = _convs(case.shape[1], torch.float64 if dtype == torch.float64 else torch.float32, case.seed + 5, device)
    return dict(student=student.requires_grad_(), teacher=teacher, **_args(fg, bg, convs, temperature, WEIGHTS))


def _biases_get_exactly_zero(args):
    assert torch.equal(args["student_gc_bias"].grad.cpu(), torch.zeros(1))  # softmax is shift-invariant


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: tuple(kdops.fgd_feature_pass(**a, backend=backend)),
    expected=lambda student, teacher, **a: reference.fgd_feature_pass(student, teacher, **a),
    shapes=SHAPES, small_shapes=SMALL_SHAPES, strided=("student", "teacher", "fg", "bg"),
    out_scale=(1e3, 1e3, 1e3, 1e3, 1e4, 1e4),  # loss, terms, ctx_s, ctx_t; diff_sq, diff_sum: sums over many elements
    grad_scale={"student": 10, "student_gc_weight": 100, "teacher_gc_weight": 100, "student_gc_bias": 100},
    after_backward=_biases_get_exactly_zero)
# float64 end to end, at float64's own tolerance (no widening), on the first small shapes on every backend.
FLOAT64 = dataclasses.replace(PARITY, shapes=SMALL_SHAPES[:3], small_shapes=SMALL_SHAPES[:3], out_scale=1.0,
                              grad_scale=1.0)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params(dtypes=DTYPES))
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params(dtypes=(torch.float64,), layouts=("contiguous",)))
def test_float64_matches_reference(backend, device, dtype, layout):
    """float64 features and GcBlock weights stay float64 end to end (Triton: float64 scalars as well)."""
    parity.check(FLOAT64, backend, device, dtype, layout)


def test_gradcheck_float64():
    student, teacher, fg, bg = focal_inputs((2, 3, 4, 5), torch.float64, "cpu", 5, 0.6)
    ws, bs, wt, bt = _convs(3, torch.float64, 6)
    assert torch.autograd.gradcheck(
        lambda s, a, b: tuple(kdops.fgd_feature_pass(s, teacher, **_args(fg, bg, (a, bs, b, bt), 0.6, WEIGHTS),
                                                     backend="cpu")),
        (student.requires_grad_(), ws, wt))


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("fgd_feature_pass", backend)
    student, teacher, fg, bg = focal_inputs((2, 3, 4, 5), torch.float32, device, 7, 0.5)
    ws, bs, wt, bt = _convs(3, torch.float32, 8, device)
    opcheck(op,
            (student.requires_grad_(), teacher, fg, bg, ws, bs.detach(), wt, bt, 0.5, *WEIGHTS))


def test_compile_fullgraph():
    student, teacher, fg, bg = focal_inputs((2, 4, 6, 5), torch.float32, "cpu", 9, 0.5)
    ws, bs, wt, bt = _convs(4, torch.float32, 10)

    def loss_fn(s, t, fg, bg):
        out = kdops.fgd_feature_pass(s, t, **_args(fg, bg, (ws, bs, wt, bt), 0.5, WEIGHTS))
        return out.loss + out.diff_sq + (out.ctx_s * out.ctx_t).sum() + out.diff_sum.sum()

    assert_compiles_like_eager(loss_fn, student.requires_grad_(), teacher, fg, bg)


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference")] + backend_params())
def test_empty_batch_gives_zeros(backend, device):
    empty = torch.zeros(0, 4, 3, 5, device=device, requires_grad=True)
    masks = torch.zeros(0, 3, 5, device=device)
    convs = (torch.ones(4, device=device, requires_grad=True), None, torch.ones(4, device=device), None)
    out = kdops.fgd_feature_pass(empty, empty.detach(), **_args(masks, masks, convs), backend=backend)
    assert out.loss.item() == 0 and out.diff_sq.item() == 0 and out.ctx_s.shape == (0, 4)
    assert torch.equal(out.terms.cpu(), torch.zeros(3))
    grad_s, grad_w = torch.autograd.grad(_objective(out, 3), (empty, convs[0]))
    assert grad_s.shape == empty.shape and torch.equal(grad_w.cpu(), torch.zeros(4))


def test_same_bits_on_one_and_several_threads():
    student, teacher, fg, bg = focal_inputs((2, 300, 23, 29), torch.float32, "cpu", 11, 0.5)
    convs = _convs(300, torch.float32, 12)
    results = []
    before = torch.get_num_threads()
    for threads in (1, 4):
        torch.set_num_threads(threads)
        try:
            s = student.clone().requires_grad_()
            out = kdops.fgd_feature_pass(s, teacher, **_args(fg, bg, convs), backend="cpu")
            grads = torch.autograd.grad(_objective(out, 13), (s, convs[0], convs[2]))
            results.append((out, grads))
        finally:
            torch.set_num_threads(before)
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert torch.equal(a, b)


def _consumers(root, leaf):
    """How many autograd nodes reachable from `root` take `leaf` as an input (each makes a leaf-sized gradient)."""
    seen, stack, count = set(), [root], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for next_node, _ in node.next_functions:
            count += getattr(next_node, "variable", None) is leaf
            stack.append(next_node)
    return count


@pytest.mark.parametrize("backend,device", backend_params())
def test_fgd_loss_takes_one_pass(monkeypatch, backend, device):
    """FGDLoss reads the features through one fgd_feature_pass call (no per-op fgd_focal_loss / gc_context
    calls), so the student gets one feature-sized gradient, and it agrees with the reference backend."""
    calls = []
    real = kdops.nn.fgd.fgd_feature_pass
    monkeypatch.setattr(kdops.nn.fgd, "fgd_feature_pass", lambda *a, **k: calls.append(k["backend"]) or real(*a, **k))
    monkeypatch.setattr(kdops.nn.fgd, "gc_context", lambda *a, **k: pytest.fail("gc_context was called"))
    dtype = torch.float64 if backend != "triton" else torch.float32  # the Triton parity tests cover float32
    fgd = kdops.nn.FGDLoss(8, 8, backend=backend).to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in fgd.parameters():  # non-zero last convs, so the relation loss uses every term
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    student = randn((2, 8, 9, 11), dtype, device, 14, requires_grad=True)
    teacher = randn((2, 8, 9, 11), dtype, device, 15)
    boxes = random_boxes(2, 9, 11, 16, dtype=dtype, device=device)
    total = fgd(student, teacher, boxes)
    assert calls == [backend]
    assert _consumers(total.grad_fn, student) == 1
    grads = torch.autograd.grad(total, (student, *fgd.parameters()))
    monkeypatch.undo()
    fgd.backend = fgd.student_gc.backend = fgd.teacher_gc.backend = "reference"
    expected = fgd(student, teacher, boxes)
    assert _consumers(expected.grad_fn, student) > 1  # the reference composes the per-op functions
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (1e-4, 1e-6)
    torch.testing.assert_close(total, expected, rtol=rtol, atol=atol)
    for a, b in zip(grads, torch.autograd.grad(expected, (student, *fgd.parameters()))):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _bad(**change):
    args = dict(student=torch.randn(2, 3, 4, 5), teacher=torch.randn(2, 3, 4, 5), fg=torch.zeros(2, 4, 5),
                bg=torch.ones(2, 4, 5) / 20, student_gc_weight=torch.ones(3), student_gc_bias=None,
                teacher_gc_weight=torch.ones(1, 3, 1, 1), teacher_gc_bias=torch.zeros(1))
    args.update(change)
    return args


@pytest.mark.parametrize("args,kwargs,error,match", [
    (_bad(teacher=torch.randn(2, 3, 4, 5, requires_grad=True)), {}, ValueError,
     "fgd_feature_pass: teacher must not require grad"),
    (_bad(fg=torch.zeros(2, 5, 4)), {}, ValueError, r"fg must have shape \(N, H, W\) = \(2, 4, 5\)"),
    (_bad(student_gc_weight=torch.ones(4)), {}, ValueError, "student_gc_weight must have C = 3 elements"),
    (_bad(teacher_gc_bias=torch.zeros(2)), {}, ValueError, "teacher_gc_bias must have one element"),
    (_bad(teacher_gc_weight=torch.ones(3, dtype=torch.long)), {}, TypeError, "teacher_gc_weight must be float16"),
    (_bad(teacher=torch.randn(2, 3, 4, 6)), {}, ValueError, "must have the same shape"),
    (_bad(), {"temperature": -1.0}, ValueError, "temperature must be a finite number >= 1e-30"),
    (_bad(), {"backend": "cuda"}, kdops.BackendUnavailableError, "the 'cuda' backend needs CUDA tensors"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.fgd_feature_pass(**args, **kwargs)


def test_direct_op_call_checks_its_arguments():
    args = _bad()
    with pytest.raises(RuntimeError, match="student_gc_bias must have shape"):
        torch.ops.kdops.fgd_feature_pass(args["student"], args["teacher"], args["fg"], args["bg"], torch.ones(3),
                                         torch.zeros(2), torch.ones(3), torch.zeros(1), 0.5, 1.0, 1.0, 1.0)
