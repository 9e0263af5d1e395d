"""Sums over a whole H*W plane keep float32 round-off at any plane size: the CPU
kernels add each plane in fixed blocks and the block results in double, so a 4096^2 or 16384^2
plane (and one of 2^31+ elements) is as exact as a small one. A float32 lane sum over the whole
plane loses 1e-3 of the loss at 4096^2 and half of it at 46341^2."""

import pytest
import torch

import kdops
from support.backends import require_backend

pytestmark = require_backend("cpu")

# float32 round-off of a blocked sum (~1e-6 at most here); the old per-lane float32 sums are 1e-4..1e-2 off.
RTOL = 1e-5


def _randn(shape, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) + shift


def _one_box(n, h, w):
    return kdops.box_masks([torch.tensor([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]])] * n, (h, w))


# name -> (inputs(side) -> (differentiated input, other inputs), fn(backend, x, *others) -> tuple of outputs).
# Each case reads a (1, C, side, side) feature map with C as small as the op allows.
def _imitation(loss, masked):
    def inputs(side):
        mask = (_randn((1, side, side), 3) > 0).float() if masked else None
        return _randn((1, 1, side, side), 1), (_randn((1, 1, side, side), 2), mask)

    def fn(backend, s, t, mask):
        return (kdops.feature_imitation(s, t, mask=mask, loss=loss, normalize="mask" if masked else "mean",
                                        backend=backend),)
    return inputs, fn


def _without_attention_grad(outs):
    """FGD outputs with the attention term's value kept but its gradient cut (gamma = 0 for the loss): the
    gradient of sum |A^s - A^t| jumps where A^s = A^t, so a few of 16M pixels flip with any rounding."""
    loss, terms, *rest = outs
    return (loss, terms[:2], terms[2:].detach(), *rest)


def _fgd_inputs(side):
    fg, bg = _one_box(1, side, side)
    return _randn((1, 2, side, side), 1), (_randn((1, 2, side, side), 2), fg, bg)


CASES = {
    "feature_imitation-mse": _imitation("mse", False),
    "feature_imitation-l1": _imitation("l1", False),
    "feature_imitation-mse-mask": _imitation("mse", True),
    "feature_imitation-l1-mask": _imitation("l1", True),
    "attention_masks": (lambda side: (_randn((1, 2, side, side), 1), ()),
                        lambda backend, x: kdops.attention_masks(x, temperature=0.5, backend=backend)),
    "cwd_loss": (lambda side: (_randn((1, 1, side, side), 1), (_randn((1, 1, side, side), 2),)),
                 lambda backend, s, t: (kdops.cwd_loss(s, t, tau=2.0, backend=backend),)),
    "pkd_loss": (lambda side: (_randn((1, 1, side, side), 1, 3.0), (_randn((1, 1, side, side), 2, -2.0),)),
                 lambda backend, s, t: (kdops.pkd_loss(s, t, backend=backend),)),
    "relation_mse": (lambda side: (_randn((1, 1, side, side), 1), (_randn((1, 1, side, side), 2),
                                                                   _randn((1, 1), 3), _randn((1, 1), 4))),
                     lambda backend, s, t, ds, dt: (kdops.relation_mse(s, t, delta_s=ds, delta_t=dt,
                                                                       backend=backend),)),
    "gc_context": (lambda side: (_randn((1, 2, side, side), 1, 1.0), (_randn((2,), 2),)),
                   lambda backend, x, w: (kdops.gc_context(x, w, backend=backend),)),
    "fgd_focal_loss": (_fgd_inputs, lambda backend, s, t, fg, bg: _without_attention_grad(kdops.fgd_focal_loss(
        s, t, fg=fg, bg=bg, alpha=1.0, beta=1.0, gamma=0.0, return_terms=True, backend=backend))),
    "fgd_feature_pass": (_fgd_inputs, lambda backend, s, t, fg, bg: _without_attention_grad(kdops.fgd_feature_pass(
        s, t, fg=fg, bg=bg, student_gc_weight=torch.tensor([0.3, -0.2]), teacher_gc_weight=torch.tensor([-0.1, 0.4]),
        alpha=1.0, beta=1.0, gamma=0.0, backend=backend))),
}


def _run(name, side, backend, dtype):
    make, fn = CASES[name]
    x, others = make(side)
    x = x.to(dtype).requires_grad_()
    others = [o.to(dtype) if o is not None and o.is_floating_point() else o for o in others]
    outs = fn(backend, x, *others)
    # A fixed random weighting of every output, so the gradient also goes through the softmax denominators.
    seeds = iter(range(100, 200))
    total = sum((o * _randn(o.shape, next(seeds)).to(dtype)).sum() for o in outs)
    total.backward()
    return [o.detach().double() for o in outs], x.grad.double()


def _relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def _check(name, side, grad=True):
    outs, g = _run(name, side, "cpu", torch.float32)
    ref_outs, ref_g = _run(name, side, "reference", torch.float64)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        err = _relative_error(o, r)
        assert err < RTOL, f"{name} at {side}^2: output {i} is {err:.2e} off the float64 value"
    if grad:
        err = _relative_error(g, ref_g)
        assert err < RTOL, f"{name} at {side}^2: the gradient is {err:.2e} off the float64 value"


# 2048^2 in the default run (a float32 sum in 8 to 32 lanes is already 2e-5 to 2e-4 off there), 4096^2 in the
# stress tier.
@pytest.mark.parametrize("side", [2048, pytest.param(4096, marks=pytest.mark.stress)])
@pytest.mark.parametrize("name", list(CASES))
def test_large_plane_matches_float64(name, side):
    _check(name, side)


# Only the light references: cwd_loss's float64 reference alone takes ~18 GiB at 16384^2.
@pytest.mark.stress
@pytest.mark.parametrize("name", ["feature_imitation-mse", "feature_imitation-l1-mask"])
def test_16384_squared_plane_matches_float64(name):
    if _available_gib() < 14:
        pytest.skip(f"a 16384^2 plane with its float64 reference needs ~14 GiB, {_available_gib():.1f} GiB available")
    _check(name, 16384, grad=False)


def _available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


# A plane of more than 2^31 bf16 values: S[h, w] = p[w], T = 0 and M[h, w] = q[h], so every sum is a
# product of two short exact sums (no float64 copy of the plane is needed).
BIG_H, BIG_W = 46344, 46341


@pytest.mark.stress
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_plane_of_more_than_2_to_the_31_elements(masked):
    need = (3 if masked else 2) * BIG_H * BIG_W * 2 / 2**30 + 1.5
    if _available_gib() < need:
        pytest.skip(f"two or three bf16 planes of {BIG_H}x{BIG_W} need ~{need:.0f} GiB, "
                    f"{_available_gib():.1f} GiB available")
    assert BIG_H * BIG_W > 2**31
    p = _randn((BIG_W,), 1).bfloat16()
    q = torch.rand((BIG_H,), generator=torch.Generator().manual_seed(2)).bfloat16()
    s = p.expand(1, 1, BIG_H, BIG_W).contiguous()
    t = torch.zeros_like(s)
    mask = q[:, None].expand(1, BIG_H, BIG_W).contiguous() if masked else None
    p64, q64 = p.double(), (q.double() if masked else torch.ones(BIG_H, dtype=torch.float64))
    for loss, rho in (("mse", p64.square()), ("l1", p64.abs())):
        got = kdops.feature_imitation(s, t, mask=mask, loss=loss, normalize="mask" if masked else "mean",
                                      backend="cpu").item()
        expected = (rho.sum() * q64.sum() / (BIG_W * q64.sum())).item()
        assert abs(got - expected) < RTOL * abs(expected), f"{loss}: {got} vs exact {expected}"
