"""One rule for every temperature argument (docs/math.md §0): a finite number >= 1e-30 is taken and gives a finite
value and finite gradients on finite inputs on every backend; a smaller one, 0, a negative one, Inf or NaN is refused
with a ValueError naming the argument (was: NaN on every backend below about 1e-38)."""

import math

import pytest
import torch

import kdops
from kdops._checks import MIN_TEMPERATURE
from support.backends import backend_param, backend_params
from support.numerics import randn

BACKENDS = [backend_param("reference")] + backend_params()


def _features(device, seed, scale):
    return (scale * randn((2, 3, 5, 4), torch.float32, device, seed),
            scale * randn((2, 3, 5, 4), torch.float32, device, seed + 1))


def _maps(device):
    fg = torch.zeros(2, 5, 4, device=device)
    fg[:, 1:3, 1:3] = 0.25
    return fg, (fg == 0).float() / 16


def _gc(device, seed):
    return randn((1, 3), torch.float32, device, seed), randn((1, 3), torch.float32, device, seed + 1)


# op name -> (temperature argument, callable(backend, device, temperature, scale) -> (outputs, student leaf))
def _attention_masks(backend, device, t, scale):
    s, _ = _features(device, 1, scale)
    s.requires_grad_()
    return kdops.attention_masks(s, temperature=t, backend=backend), s


def _fgd_focal_loss(backend, device, t, scale):
    s, te = _features(device, 2, scale)
    fg, bg = _maps(device)
    s.requires_grad_()
    return kdops.fgd_focal_loss(s, te, fg=fg, bg=bg, temperature=t, backend=backend), s


def _fgd_feature_pass(backend, device, t, scale):
    s, te = _features(device, 3, scale)
    fg, bg = _maps(device)
    s.requires_grad_()
    (sw, _), (tw, _) = _gc(device, 4), _gc(device, 6)
    out = kdops.fgd_feature_pass(s, te, fg=fg, bg=bg, student_gc_weight=sw, teacher_gc_weight=tw, temperature=t,
                                 backend=backend)
    return tuple(out), s


def _soft_cross_entropy(backend, device, t, scale):
    s = (scale * randn((7, 5), torch.float32, device, 8)).requires_grad_()
    return kdops.soft_cross_entropy(s, scale * randn((7, 5), torch.float32, device, 9), temperature=t,
                                    backend=backend), s


def _soft_binary_cross_entropy(backend, device, t, scale):
    s = (scale * randn((7, 5), torch.float32, device, 10)).requires_grad_()
    return kdops.soft_binary_cross_entropy(s, scale * randn((7, 5), torch.float32, device, 11), temperature=t,
                                           backend=backend), s


def _cwd_loss(backend, device, t, scale):
    s, te = _features(device, 12, scale)
    s.requires_grad_()
    return kdops.cwd_loss(s, te, tau=t, backend=backend), s


def _ld_loss(backend, device, t, scale):
    s = (scale * randn((6, 17), torch.float32, device, 14)).requires_grad_()
    return kdops.ld_loss(s, scale * randn((6, 17), torch.float32, device, 15), temperature=t, backend=backend), s


OPS = {"attention_masks": ("temperature", _attention_masks), "fgd_focal_loss": ("temperature", _fgd_focal_loss),
       "fgd_feature_pass": ("temperature", _fgd_feature_pass),
       "soft_cross_entropy": ("temperature", _soft_cross_entropy),
       "soft_binary_cross_entropy": ("temperature", _soft_binary_cross_entropy), "cwd_loss": ("tau", _cwd_loss),
       "ld_loss": ("temperature", _ld_loss)}


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("temperature", [MIN_TEMPERATURE, 1e-12, 1e6], ids=["min", "1e-12", "1e6"])
@pytest.mark.parametrize("scale", [1.0, 1e3], ids=["x1", "x1000"])
def test_finite_at_every_accepted_temperature(backend, device, op, temperature, scale):
    outputs, student = OPS[op][1](backend, device, temperature, scale)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for k, out in enumerate(outputs):
        assert torch.isfinite(out).all(), f"{op} output {k} at T={temperature:g}: {out}"
    total = sum((k + 1.5) * out.sum() for k, out in enumerate(outputs) if out.requires_grad)
    grad, = torch.autograd.grad(total, student)
    assert torch.isfinite(grad).all(), f"{op} gradient at T={temperature:g}"


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("temperature", [1e-31, 1e-39, 0.0, -1.0, math.inf, math.nan])
def test_refused_outside_the_range(op, temperature):
    name, run = OPS[op]
    with pytest.raises(ValueError, match=rf"kdops\.{op}: {name} must be a finite number >= 1e-30"):
        run("reference", "cpu", temperature, 1.0)
