"""Rows and pixels of weight 0 do not exist for an op (docs/math.md §0): a NaN or an infinity in them changes no
output and no gradient, on every backend, while a NaN in a row that counts still reaches the loss.

Each test runs an op twice on one backend, with the zero-weight rows (pixels) holding ordinary values and then
holding NaN, +Inf or -Inf in each input, and asks for the same bits: the rows that count are computed the same
way both times, and the others must add exactly 0."""

import math

import pytest
import torch

import kdops
from support.backends import backend_param, backend_params
from support.numerics import DTYPES, randn
from support.parity import is_stress

BACKENDS = [backend_param("reference")] + backend_params()
BAD = (float("nan"), float("inf"), float("-inf"))


def _backends_and_dtypes():
    """(backend, device, dtype) for every dtype; on the (slow) Triton interpreter and CUDA emulator the default run
    takes one representative dtype each and the stress tier the others (parity.is_stress, docs/testing.md)."""
    params = []
    for b in BACKENDS:
        backend, device = b.values
        for dtype in DTYPES + (torch.float64,):
            marks = b.marks + ((pytest.mark.stress,) if is_stress(backend, device, dtype) else ())
            params.append(pytest.param(backend, device, dtype, id=f"{b.id}-{str(dtype)[6:]}", marks=marks))
    return params


BACKENDS_AND_DTYPES = _backends_and_dtypes()


def _run(fn, inputs, wrt):
    """fn(**inputs)'s outputs and the gradients of sum_k (k + 1.5) * output_k w.r.t. the inputs named in wrt."""
    leaves = {n: (t.detach().clone().requires_grad_() if n in wrt else t) for n, t in inputs.items()}
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = []
    if wrt:
        total = sum((k + 1.5) * o.sum() for k, o in enumerate(outs))
        grads = list(torch.autograd.grad(total, [leaves[n] for n in wrt]))
    return [o.detach() for o in outs] + grads


def _assert_same(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.isfinite(e).all(), f"{what}: the reference run is not finite (result {i})"
        assert torch.equal(a, e), f"{what}: result {i} differs where only rows of weight 0 changed"


def _poisoned(x, where, value):
    """x with `value` wherever the boolean `where` (broadcast against x) holds."""
    return torch.where(where.expand_as(x), torch.full_like(x, value), x)


def _check(fn, inputs, zero, poison, wrt, what):
    """Same outputs and gradients when each input in `poison` holds NaN/+Inf/-Inf where `zero` holds."""
    expected = _run(fn, inputs, wrt)
    for name in poison:
        for value in BAD:
            dirty = dict(inputs, **{name: _poisoned(inputs[name], zero, value)})
            _assert_same(_run(fn, dirty, wrt), expected, f"{what}, {name} = {value}")
    everything = dict(inputs, **{n: _poisoned(inputs[n], zero, float("nan")) for n in poison})
    _assert_same(_run(fn, everything, wrt), expected, f"{what}, NaN in every input")


# bounded_regression: weight per row ------------------------------------------------------------------------------

def _regression_inputs(shape, dtype, device, seed, margin):
    """Rows off the bound's kink (|e_s + margin - e_t| >= 0.05) and weights 0, 1, 0.5 and -0.5."""
    target = randn(shape, torch.float64, device, seed)
    student = target + randn(shape, torch.float64, device, seed + 1)
    teacher = target + 1.2 * randn(shape, torch.float64, device, seed + 2)
    gap = ((student - target) ** 2).sum(-1) + margin - ((teacher - target) ** 2).sum(-1)
    teacher[gap.abs() < 0.05] = target[gap.abs() < 0.05]
    weight = torch.tensor([0.0, 1.0, 0.5, 0.0, -0.5, 1.0], dtype=torch.float64).repeat(shape[0])
    weight = weight[: math.prod(shape[:-1])].reshape(shape[:-1]).to(device)
    return dict(student_reg=student.to(dtype), teacher_reg=teacher.to(dtype), target=target.to(dtype), weight=weight)


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
def test_bounded_regression(backend, device, dtype):
    for shape, margin in (((37, 4), 0.0), ((3, 5, 7), 0.25)):
        inputs = _regression_inputs(shape, dtype, device, 11, margin)
        zero = (inputs["weight"] == 0)[..., None]

        def loss(student_reg, teacher_reg, target, weight):
            return kdops.bounded_regression(student_reg, teacher_reg, target=target, weight=weight, margin=margin,
                                            backend=backend)

        _check(loss, inputs, zero, ("student_reg", "teacher_reg", "target"), ("student_reg",),
               f"{backend} {dtype} {shape}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bounded_regression_module_with_smooth_l1(backend, device):
    """kdops.nn.BoundedRegressionLoss's smooth-L1 term follows the rule too."""
    inputs = _regression_inputs((37, 4), torch.float32, device, 5, 0.0)
    zero = (inputs["weight"] == 0)[..., None]
    module = kdops.nn.BoundedRegressionLoss(with_smooth_l1=True, backend=backend)

    def loss(student_reg, teacher_reg, target, weight):
        return module(student_reg, teacher_reg, target, weight)

    _check(loss, inputs, zero, ("student_reg", "teacher_reg", "target"), ("student_reg",), backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("shape", [(37, 4), (12, 3)], ids=["D4", "D3"])
def test_bounded_regression_nonfinite_weight_counts(backend, device, bad, shape):
    """A NaN or infinite weight is not 0: its row counts (docs/math.md §0), so every backend gives the reference's
    non-finite value and gradient, whether the row is in the bound or not (was: the CPU kernel returned finite
    values)."""
    inputs = _regression_inputs(shape, torch.float32, device, 21, 0.0)
    for row in (1, 2):  # one row in the bound and one out of it, at least: both kinds of row get the bad weight
        inputs["weight"][row] = bad
    results = {}
    for b in ("reference", backend):
        student = inputs["student_reg"].clone().requires_grad_()
        out = kdops.bounded_regression(student, inputs["teacher_reg"], target=inputs["target"],
                                       weight=inputs["weight"], backend=b)
        out.backward()
        results[b] = (out.detach().cpu(), student.grad.cpu())
    (ref_out, ref_grad), (out, grad) = results["reference"], results[backend]
    assert not torch.isfinite(ref_out)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    assert torch.equal(grad.isnan(), ref_grad.isnan()) and torch.equal(grad.isinf(), ref_grad.isinf())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("side", ["student_reg", "teacher_reg", "target"])
def test_bounded_regression_nan_in_a_weighted_row_propagates(backend, device, side):
    inputs = _regression_inputs((12, 4), torch.float32, device, 3, 0.0)
    inputs[side][2, 1] = float("nan")  # row 2 has weight 0.5
    student = inputs["student_reg"].requires_grad_()
    out = kdops.bounded_regression(student, inputs["teacher_reg"], target=inputs["target"], weight=inputs["weight"],
                                   backend=backend)
    assert out.isnan()
    out.backward()
    assert student.grad[2].isnan().all()
    assert torch.isfinite(student.grad[3]).all()  # a row of weight 0 stays 0 next to it


# feature_imitation: mask per pixel -------------------------------------------------------------------------------

def _imitation_inputs(dtype, device, seed):
    shape = (2, 3, 5, 7)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape[0], shape[2], shape[3], generator=g, dtype=torch.float64)
    mask = torch.where(mask < 0.4, torch.zeros_like(mask), mask).to(device=device, dtype=dtype)
    return dict(student=randn(shape, dtype, device, seed + 1), teacher=randn(shape, dtype, device, seed + 2),
                mask=mask)


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
@pytest.mark.parametrize("loss_kind", ["mse", "l1"])
def test_feature_imitation(backend, device, dtype, loss_kind):
    inputs = _imitation_inputs(dtype, device, 21)
    zero = (inputs["mask"] == 0)[:, None]
    for normalize in ("batch", "mask"):
        def loss(student, teacher, mask):
            return kdops.feature_imitation(student, teacher, mask=mask, loss=loss_kind, normalize=normalize,
                                           backend=backend)

        _check(loss, inputs, zero, ("student", "teacher"), ("student", "teacher"),
               f"{backend} {dtype} {loss_kind} {normalize}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_feature_imitation_nan_in_a_weighted_pixel_propagates(backend, device):
    inputs = _imitation_inputs(torch.float32, device, 7)
    n, h, w = (inputs["mask"] > 0).nonzero()[0].tolist()
    inputs["teacher"][n, 1, h, w] = float("nan")
    student = inputs["student"].requires_grad_()
    out = kdops.feature_imitation(student, inputs["teacher"], mask=inputs["mask"], backend=backend)
    assert out.isnan()
    out.backward()
    assert student.grad[n, 1, h, w].isnan()
    assert torch.isfinite(student.grad[inputs["mask"][:, None].expand_as(student) == 0]).all()


# FGD: fg / bg masks per pixel and the term weights ---------------------------------------------------------------

def _fgd_inputs(dtype, device, seed):
    """Masks with a block of pixels where fg = bg = 0 (box_masks never leaves one: a caller's own masks do)."""
    shape = (2, 4, 6, 5)
    g = torch.Generator().manual_seed(seed)
    fg = torch.rand(shape[0], shape[2], shape[3], generator=g, dtype=torch.float64)
    fg = torch.where(fg < 0.5, torch.zeros_like(fg), fg)
    bg = torch.where(fg > 0, torch.zeros_like(fg), torch.full_like(fg, 0.1))
    bg[:, :2, :2] = 0.0
    fg[:, :2, :2] = 0.0
    return dict(student=randn(shape, dtype, device, seed + 1), teacher=randn(shape, dtype, device, seed + 2),
                fg=fg.to(device), bg=bg.to(device))


FGD_WEIGHTS = dict(temperature=0.5, alpha=2e-3, beta=7e-4, gamma=0.0)


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
def test_fgd_focal_loss(backend, device, dtype):
    """With gamma = 0 the loss and dL/dS ignore the student at pixels where both masks are 0; L_fg and L_bg do
    with any gamma (L_att reads every pixel by definition)."""
    inputs = _fgd_inputs(dtype, device, 31)
    zero = ((inputs["fg"] == 0) & (inputs["bg"] == 0))[:, None]

    def loss(student, teacher, fg, bg):
        return kdops.fgd_focal_loss(student, teacher, fg=fg, bg=bg, backend=backend, **FGD_WEIGHTS)

    _check(loss, inputs, zero, ("student",), ("student",), f"{backend} {dtype}")

    def feature_terms(student, teacher, fg, bg):
        terms = kdops.fgd_focal_loss(student, teacher, fg=fg, bg=bg, return_terms=True, backend=backend,
                                     **dict(FGD_WEIGHTS, gamma=5e-4))[1]
        return terms[0], terms[1]

    _check(feature_terms, inputs, zero, ("student",), (), f"{backend} {dtype} terms")


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
def test_fgd_feature_pass(backend, device, dtype):
    """loss (gamma = 0), L_fg and L_bg ignore the student at pixels where both masks are 0; the contexts and the
    relation sums read every pixel by definition (docs/math.md §4)."""
    inputs = _fgd_inputs(dtype, device, 41)
    zero = ((inputs["fg"] == 0) & (inputs["bg"] == 0))[:, None]
    c = inputs["student"].shape[1]
    gc = dict(student_gc_weight=randn((c,), torch.float32, device, 1), teacher_gc_weight=randn((c,), torch.float32,
                                                                                               device, 2))

    def focal_outputs(student, teacher, fg, bg):
        out = kdops.fgd_feature_pass(student, teacher, fg=fg, bg=bg, backend=backend, **gc, **FGD_WEIGHTS)
        return out.loss, out.terms[0], out.terms[1]

    _check(focal_outputs, inputs, zero, ("student",), (), f"{backend} {dtype}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_fgd_nan_in_a_weighted_pixel_propagates(backend, device):
    inputs = _fgd_inputs(torch.float32, device, 17)
    n, h, w = (inputs["fg"] > 0).nonzero()[0].tolist()
    inputs["student"][n, 2, h, w] = float("nan")
    student = inputs["student"].requires_grad_()
    loss, terms = kdops.fgd_focal_loss(student, inputs["teacher"], fg=inputs["fg"], bg=inputs["bg"],
                                       return_terms=True, backend=backend, **FGD_WEIGHTS)
    assert loss.isnan() and terms[0].isnan() and not terms[1].isnan()
    loss.backward()
    assert student.grad[n, 2, h, w].isnan()


# soft cross-entropies: rows (anchors) labelled ignore_index ------------------------------------------------------

def _logits(shape, dtype, device, seed, binary=False):
    """Logits and labels (one per row, or one per anchor for binary), every third one ignore_index."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2 if binary else shape[-1], shape if binary else shape[:1], generator=g)
    target.view(-1)[::3] = -1  # ignore_index
    return dict(student=(3 * randn(shape, torch.float64, device, seed + 1)).to(dtype),
                teacher=(3 * randn(shape, torch.float64, device, seed + 2)).to(dtype)), target.to(device)


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
def test_soft_cross_entropy_ignored_rows(backend, device, dtype):
    inputs, target = _logits((13, 7), dtype, device, 51)
    zero = (target == -1)[:, None]
    class_weight = torch.linspace(0.5, 1.5, 7, device=device)
    for temperature, mu in ((1.0, 0.0), (2.0, 0.5)):
        def loss(student, teacher):
            return kdops.soft_cross_entropy(student, teacher, class_weight=class_weight, target=target,
                                            temperature=temperature, mu=mu, backend=backend)

        _check(loss, inputs, zero, ("student", "teacher"), ("student",), f"{backend} {dtype} T={temperature}")


@pytest.mark.parametrize("backend,device,dtype", BACKENDS_AND_DTYPES)
def test_soft_binary_cross_entropy_ignored_anchors(backend, device, dtype):
    inputs, target = _logits((3, 41), dtype, device, 61, binary=True)
    zero = target == -1
    for temperature, mu in ((1.0, 0.0), (2.0, 0.5)):
        def loss(student, teacher):
            return kdops.soft_binary_cross_entropy(student, teacher, target=target, temperature=temperature, mu=mu,
                                                   backend=backend)

        _check(loss, inputs, zero, ("student", "teacher"), ("student",), f"{backend} {dtype} T={temperature}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_soft_cross_entropy_nan_in_a_kept_row_propagates(backend, device):
    inputs, target = _logits((13, 7), torch.float32, device, 5)
    inputs["teacher"][1, 3] = float("nan")  # row 1 is kept
    student = inputs["student"].requires_grad_()
    out = kdops.soft_cross_entropy(student, inputs["teacher"], target=target, mu=0.5, backend=backend)
    assert out.isnan()
    out.backward()
    assert student.grad[1].isnan().any() and torch.isfinite(student.grad[0]).all()
