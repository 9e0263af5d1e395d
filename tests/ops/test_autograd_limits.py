"""What the fused backends' autograd supports, and the errors where it stops (docs/math.md §0, "Autograd").

Fused ops have a first-order backward: double backward and torch.func transforms that differentiate must raise
an error naming the op (before: zero second derivatives on cpu, a silent zero tangent from torch.func.jvp on
triton, messages about internal ops elsewhere); torch.func.vmap works; the reference backend does everything.
"""

import pytest
import torch

import kdops
from kdops import _checks
from support import cuda_emu
from support.backends import on_cpu, require_backend
from support.numerics import randn

# The Python side of the check runs in the registry's autograd (triton, cuda_emu): until it is wired there,
# those backends still fail with PyTorch's own messages.


def _feature(seed, shape=(2, 3, 4, 5)):
    return randn(shape, torch.float64, "cpu", seed)


def _cases():
    """op -> (input x, loss(x, backend) -> a scalar that depends on x through the op)."""
    t = _feature(1)
    fg = torch.zeros(2, 4, 5, dtype=torch.float64)
    fg[:, 1:3, 1:4] = 1.0 / 6
    bg = torch.where(fg > 0, 0.0, 1.0 / 14).to(torch.float64)
    w_s, w_t = randn((3,), torch.float64, "cpu", 2), randn((3,), torch.float64, "cpu", 3)
    d_s, d_t = randn((2, 3), torch.float64, "cpu", 4), randn((2, 3), torch.float64, "cpu", 5)
    rows_t = 3 * randn((6, 7), torch.float64, "cpu", 6)
    reg_t, reg_y = randn((6, 4), torch.float64, "cpu", 7), randn((6, 4), torch.float64, "cpu", 8)
    weight = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    pattern = _feature(9)

    def attention(x, b):
        spatial, channel = kdops.attention_masks(x, backend=b)
        return (spatial * pattern[:, 0]).sum() + (channel * pattern[:, :, 0, 0]).sum()

    def feature_pass(x, b):
        out = kdops.fgd_feature_pass(x, t, fg=fg, bg=bg, student_gc_weight=w_s, teacher_gc_weight=w_t, backend=b)
        return out.loss + (out.ctx_s * d_s).sum() + out.diff_sq * 1e-3 + (out.diff_sum * d_t).sum()

    return {
        "attention_masks": (_feature(0), attention),
        "feature_imitation": (_feature(0), lambda x, b: kdops.feature_imitation(x, t, backend=b)),
        "cwd_loss": (_feature(0), lambda x, b: kdops.cwd_loss(x, t, tau=2.0, backend=b)),
        "pkd_loss": (_feature(0), lambda x, b: kdops.pkd_loss(x, t, backend=b)),
        "gc_context": (_feature(0), lambda x, b: (kdops.gc_context(x, w_s, backend=b) * d_s).sum()),
        "relation_mse": (_feature(0), lambda x, b: kdops.relation_mse(x, t, delta_s=d_s, delta_t=d_t, backend=b)),
        "fgd_focal_loss": (_feature(0), lambda x, b: kdops.fgd_focal_loss(x, t, fg=fg, bg=bg, alpha=1.0, beta=0.5,
                                                                          gamma=0.1, backend=b)),
        "fgd_feature_pass": (_feature(0), feature_pass),
        "soft_cross_entropy": (3 * randn((6, 7), torch.float64, "cpu", 10),
                               lambda x, b: kdops.soft_cross_entropy(x, rows_t, temperature=2.0, backend=b)),
        "soft_binary_cross_entropy": (3 * randn((6, 7), torch.float64, "cpu", 11),
                                      lambda x, b: kdops.soft_binary_cross_entropy(x, rows_t, backend=b)),
        "bounded_regression": (randn((6, 4), torch.float64, "cpu", 12),
                               lambda x, b: kdops.bounded_regression(x, reg_t, target=reg_y, weight=weight, backend=b)),
        "quality_focal_kd": (3 * randn((6, 7), torch.float64, "cpu", 13),
                             lambda x, b: kdops.quality_focal_kd(x, rows_t, weight=weight, beta=2.0, backend=b)),
        "ld_loss": (3 * randn((6, 7), torch.float64, "cpu", 14),
                    lambda x, b: kdops.ld_loss(x, rows_t, weight=weight, temperature=2.0, backend=b)),
    }


OPS = sorted(_cases())


def _fused():
    """The fused backends on CPU tensors."""
    return on_cpu("cpu", cuda_emu.NAME, "triton")


# The checks these tests reach on the Triton interpreter and the CUDA emulator are the registry's, the same for
# every op: the default run takes a feature-map op and a row op there, the stress tier the others; the C++
# kernels run every op in both (docs/testing.md).
SLOW = (cuda_emu.NAME, "triton")
SLOW_DEFAULT_OPS = ("feature_imitation", "soft_cross_entropy")


def _ops_on(*backends):
    """(op, backend) params of every op on each backend, skipped where the backend cannot run."""
    return [pytest.param(op, b.values[0], id=f"{op}-{b.id}",
                         marks=b.marks + ((pytest.mark.stress,) if b.values[0] in SLOW and op not in SLOW_DEFAULT_OPS
                                          else ()))
            for op in OPS for b in on_cpu(*backends)]


def _double_backward(op, backend):
    x, loss = _cases()[op]
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x, backend), x, create_graph=True)
    return torch.autograd.grad((g * g).sum(), x)


def _func(transform, op, backend):
    x, loss = _cases()[op]
    f = lambda x: loss(x, backend)  # noqa: E731
    if transform == "grad":
        return torch.func.grad(f)(x)
    if transform == "vjp":
        return torch.func.vjp(f, x)[1](torch.ones((), dtype=x.dtype))
    if transform == "jvp":
        return torch.func.jvp(f, (x,), (torch.ones_like(x),))
    if transform == "jacrev":
        return torch.func.jacrev(f)(x)
    if transform == "hessian":
        return torch.autograd.functional.hessian(f, x)
    if transform == "forward_ad":
        import torch.autograd.forward_ad as forward_ad

        with forward_ad.dual_level():
            return forward_ad.unpack_dual(f(forward_ad.make_dual(x, torch.ones_like(x)))).tangent
    raise AssertionError(transform)


# Rendered into docs/bad_inputs.md's kdops table (tests/test_bad_inputs_doc.py).
@pytest.mark.parametrize("op,backend,use,error,match", [
    ("attention_masks", "cpu", "double backward", RuntimeError, r"kdops\.attention_masks: double backward"),
    ("bounded_regression", "cpu", "double backward", RuntimeError, r"kdops\.bounded_regression: double backward"),
    ("cwd_loss", "cpu", "double backward", RuntimeError, r"kdops\.cwd_loss: double backward"),
    ("feature_imitation", "cpu", "double backward", RuntimeError, r"kdops\.feature_imitation: double backward"),
    ("fgd_feature_pass", "cpu", "double backward", RuntimeError, r"kdops\.fgd_feature_pass: double backward"),
    ("fgd_focal_loss", "cpu", "double backward", RuntimeError, r"kdops\.fgd_focal_loss: double backward"),
    ("gc_context", "cpu", "double backward", RuntimeError, r"kdops\.gc_context: double backward"),
    ("ld_loss", "cpu", "double backward", RuntimeError, r"kdops\.ld_loss: double backward"),
    ("pkd_loss", "cpu", "double backward", RuntimeError, r"kdops\.pkd_loss: double backward"),
    ("quality_focal_kd", "cpu", "double backward", RuntimeError, r"kdops\.quality_focal_kd: double backward"),
    ("relation_mse", "cpu", "double backward", RuntimeError, r"kdops\.relation_mse: double backward"),
    ("soft_binary_cross_entropy", "cpu", "double backward", RuntimeError,
     r"kdops\.soft_binary_cross_entropy: double backward"),
    ("soft_cross_entropy", "cpu", "double backward", RuntimeError, r"kdops\.soft_cross_entropy: double backward"),
    ("cwd_loss", "cpu", "hessian", RuntimeError, r"kdops\.cwd_loss: double backward"),
    ("feature_imitation", "cpu", "grad", RuntimeError,
     r"kdops\.feature_imitation: torch\.func transforms that differentiate"),
    ("soft_cross_entropy", "cpu", "vjp", RuntimeError,
     r"kdops\.soft_cross_entropy: torch\.func transforms that differentiate"),
    ("pkd_loss", "cpu", "jvp", RuntimeError, r"kdops\.pkd_loss: torch\.func transforms that differentiate"),
    ("fgd_focal_loss", "cpu", "jacrev", RuntimeError,
     r"kdops\.fgd_focal_loss: torch\.func transforms that differentiate"),
    ("quality_focal_kd", "cpu", "grad", RuntimeError,
     r"kdops\.quality_focal_kd: torch\.func transforms that differentiate"),
    ("ld_loss", "cpu", "jvp", RuntimeError, r"kdops\.ld_loss: torch\.func transforms that differentiate"),
    ("bounded_regression", "cpu", "forward_ad", RuntimeError,
     r"kdops\.bounded_regression: torch\.func transforms that differentiate .* and forward-mode AD"),
])
@require_backend("cpu")
def test_bad_autograd_use(op, backend, use, error, match):
    with pytest.raises(error, match=match):
        if use == "double backward":
            _double_backward(op, backend)
        else:
            _func(use, op, backend)


@pytest.mark.parametrize("op,backend", _ops_on("cpu", cuda_emu.NAME, "triton"))
def test_double_backward_raises_naming_the_op(op, backend):
    with pytest.raises(RuntimeError) as info:
        _double_backward(op, backend)
    assert str(info.value).startswith(_checks.double_backward_message(op)), str(info.value)


@pytest.mark.parametrize("op,backend", _ops_on("cpu", cuda_emu.NAME, "triton"))
def test_first_derivative_with_create_graph_is_right(op, backend):
    """create_graph=True alone is fine: the gradient is the plain one (only differentiating it raises)."""
    x, loss = _cases()[op]
    x = x.clone().requires_grad_()
    (with_graph,) = torch.autograd.grad(loss(x, backend), x, create_graph=True)
    (plain,) = torch.autograd.grad(loss(x, backend), x)
    assert torch.equal(with_graph.detach(), plain)


@pytest.mark.parametrize("backend", _fused())
@pytest.mark.parametrize("transform", ["grad", "vjp", "jvp", "jacrev", "forward_ad"])
@pytest.mark.parametrize("op", ["feature_imitation", "soft_cross_entropy", "fgd_feature_pass", "quality_focal_kd",
                                "ld_loss"])
def test_torch_func_transforms_that_differentiate_raise_naming_the_op(op, transform, backend):
    with pytest.raises(RuntimeError) as info:
        _func(transform, op, backend)
    assert str(info.value).startswith(_checks.func_transform_message(op)), str(info.value)


@pytest.mark.parametrize("op,backend", _ops_on("reference", "cpu", cuda_emu.NAME, "triton"))
def test_vmap_matches_a_loop(op, backend):
    """torch.func.vmap over a batch of inputs gives each input's own value (PyTorch's per-sample fallback on the
    fused backends)."""
    x, loss = _cases()[op]
    batch = torch.stack([x, 1.5 * x, x.flip(0)])
    mapped = torch.func.vmap(lambda v: loss(v, backend))(batch)
    looped = torch.stack([loss(v, backend) for v in batch])
    torch.testing.assert_close(mapped, looped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_reference_has_second_derivatives(op):
    """The reference is plain PyTorch: gradgradcheck holds (float64, points off the kinks)."""
    x, loss = _cases()[op]
    assert torch.autograd.gradgradcheck(lambda v: loss(v, "reference"), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("transform", ["grad", "jvp", "hessian"])
@pytest.mark.parametrize("op", OPS)
def test_reference_supports_torch_func(op, transform):
    x, loss = _cases()[op]
    x = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(x, "reference"), x)
    result = _func(transform, op, "reference")
    if transform == "grad":
        torch.testing.assert_close(result, expected)
    elif transform == "jvp":
        torch.testing.assert_close(result[1], expected.sum())
    else:
        assert result.shape == x.shape + x.shape and torch.isfinite(result).all()


@require_backend("cpu")
def test_cpp_and_python_share_the_messages():
    """The C++ autograd (cpu, cuda) and the Python one (registry) say the same thing."""
    with pytest.raises(RuntimeError) as info:
        _double_backward("cwd_loss", "cpu")
    assert str(info.value).startswith(_checks.double_backward_message("cwd_loss"))
    with pytest.raises(RuntimeError) as info:
        _func("grad", "cwd_loss", "cpu")
    assert str(info.value).startswith(_checks.func_transform_message("cwd_loss"))
