"""kdops.nn.FGDLoss against a faithful port of the official FGD code (tests/support/official_fgd.py), float64, 1e-6 relative:
total, each term, the student-feature gradient and every parameter gradient (GcBlocks, align)."""

import pytest
import torch

import kdops
from kdops.nn.fgd import PRESETS
from support.backends import on_cpu
from support.cuda_emu import NAME as CUDA_EMU
from support.numerics import randn
from support.official_fgd import official_from

H, W = 11, 14


def _boxes():
    """Overlapping boxes, boxes touching / crossing the border, sub-pixel boxes, an image without boxes."""
    return [
        torch.tensor([[1.3, 2.2, 6.8, 7.5], [3.1, 3.9, 5.2, 5.05],          # overlapping: the smaller wins
                      [-2.5, -1.0, 2.2, 3.4], [10.5, 8.2, 16.0, 14.0],      # crossing the border
                      [0.0, 0.0, 0.0, 0.0], [13.0, 10.0, 13.0, 10.0],       # touching the corners
                      [7.41, 4.52, 7.43, 4.55], [20.0, 1.0, 25.0, 3.0]],    # sub-pixel; entirely outside
                     dtype=torch.float64),
        torch.zeros(0, 4, dtype=torch.float64),
        torch.tensor([[0.5, 0.5, 13.5, 10.5]], dtype=torch.float64),         # almost everything foreground
    ]


def _pair(student_channels, teacher_channels, preset, backend, seed):
    fgd = kdops.nn.FGDLoss.preset(preset, student_channels, teacher_channels, backend=backend).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero last convs, so every GcBlock parameter gets a gradient
        for p in fgd.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    return fgd, official_from(fgd)


def _close(actual, expected, what):
    """1e-6 relative to the tensor's scale (an element where terms cancel to ~0 is compared at that scale)."""
    atol = 1e-6 * float(expected.detach().abs().max()) + 1e-15
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=atol, msg=lambda m: f"{what}: {m}")


def _official_port_params():
    """(preset, channels, backend) on every backend that runs on CPU tensors (cpu, the CUDA kernels under the
    emulator, Triton's interpreter). The presets and channel counts change the module's weights and its align
    conv, not the kernels: on the (slow) emulator and interpreter the default run takes one preset with an align
    conv, the stress tier the others (docs/testing.md)."""
    params = []
    for preset in ("two_stage", "retinanet", "fcos"):
        for i, channels in enumerate([(6, 6), (4, 6)]):
            for b in on_cpu("reference", "cpu", CUDA_EMU, "triton"):
                slow = b.values[0] in (CUDA_EMU, "triton") and (preset, channels) != ("retinanet", (4, 6))
                params.append(pytest.param(preset, channels, b.values[0], id=f"{preset}-channels{i}-{b.id}",
                                           marks=b.marks + ((pytest.mark.stress,) if slow else ())))
    return params


@pytest.mark.parametrize("preset,channels,backend", _official_port_params())
def test_matches_official_port(backend, channels, preset):
    student_channels, teacher_channels = channels
    fgd, official = _pair(student_channels, teacher_channels, preset, backend, 1)
    # Scale the features so every term is of a similar size despite the preset weights.
    student = (randn((3, student_channels, H, W), torch.float64, "cpu", 2) * 3).requires_grad_()
    student_ref = student.detach().clone().requires_grad_()
    teacher = randn((3, teacher_channels, H, W), torch.float64, "cpu", 3) * 3

    total = fgd(student, teacher, _boxes())
    expected = official(student_ref, teacher, _boxes())
    _close(total, expected, "total")
    for name in ("fg", "bg", "attention", "global"):
        _close(fgd.last_terms[name], official.last_terms[name].detach(), name)
        assert not fgd.last_terms[name].requires_grad
    _close(sum(fgd.last_terms.values()), total.detach(), "terms add up to the total")

    total.backward()
    expected.backward()
    _close(student.grad, student_ref.grad, "student gradient")
    official_grads = {k: p.grad for k, p in official.named_parameters()}
    for name, p in fgd.named_parameters():
        assert p.grad is not None, name
        _close(p.grad, official_grads[_official_name(name)], f"gradient of {name}")


def _official_name(name):
    """OfficialFGD's name of a kdops.nn.FGDLoss parameter."""
    for prefix, official in (("student_gc.conv_mask", "conv_mask_s"), ("teacher_gc.conv_mask", "conv_mask_t"),
                             ("student_gc.channel_add", "channel_add_conv_s"),
                             ("teacher_gc.channel_add", "channel_add_conv_t"), ("align", "align")):
        if name.startswith(prefix + "."):
            return official + name[len(prefix):]
    raise KeyError(name)


def test_fresh_module_zero_initialised_last_conv():
    """As in the official code the channel-add MLP starts at zero: the relation loss starts as sum (S - T)^2 / N."""
    fgd = kdops.nn.FGDLoss(8, 8)
    assert torch.count_nonzero(fgd.student_gc.channel_add[-1].weight) == 0
    assert fgd.align is None and kdops.nn.FGDLoss(4, 8).align is not None
    student, teacher = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    fgd(student, teacher, [torch.zeros(0, 4), torch.tensor([[1.0, 1.0, 3.0, 2.0]])])
    torch.testing.assert_close(fgd.last_terms["global"], fgd.lambda_ * ((student - teacher) ** 2).sum() / 2)


def test_presets_are_the_official_values():
    assert PRESETS["two_stage"] == dict(temperature=0.5, alpha=5e-5, beta=2.5e-5, gamma=5e-5, lambda_=5e-7)
    assert PRESETS["retinanet"] == dict(temperature=0.5, alpha=1e-3, beta=5e-4, gamma=5e-4, lambda_=5e-6)
    assert PRESETS["fcos"] == dict(temperature=0.8, alpha=1.6e-3, beta=8e-4, gamma=8e-4, lambda_=8e-6)
    fcos = kdops.nn.FGDLoss.preset("fcos", 4, 8, alpha=1.0)
    assert (fcos.temperature, fcos.alpha, fcos.beta) == (0.8, 1.0, 8e-4)
    with pytest.raises(ValueError, match="family must be one of"):
        kdops.nn.FGDLoss.preset("yolo", 4, 8)


def test_mixed_precision_student_and_float32_teacher():
    fgd = kdops.nn.FGDLoss(8, 8)
    student = torch.randn(2, 8, 5, 6, dtype=torch.bfloat16, requires_grad=True)
    loss = fgd(student, torch.randn(2, 8, 5, 6), [torch.tensor([[0.0, 0.0, 2.0, 2.0]])] * 2)
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16 and torch.isfinite(loss)


def test_compile_fullgraph():
    fgd = kdops.nn.FGDLoss(4, 4)
    student, teacher = torch.randn(2, 4, 5, 6, requires_grad=True), torch.randn(2, 4, 5, 6)
    boxes = [torch.tensor([[0.5, 1.0, 2.0, 3.0]]), torch.zeros(0, 4)]
    compiled = torch.compile(fgd, fullgraph=True, backend="aot_eager")
    out = compiled(student, teacher, boxes)
    torch.testing.assert_close(out, fgd(student, teacher, boxes))


@pytest.mark.parametrize("boxes,error,match", [
    ([torch.zeros(1, 4)], ValueError, r"one \(K_i, 4\) tensor per image \(2 images\)"),
    ([torch.zeros(1, 4), torch.zeros(1, 4, device="meta")], ValueError, r"boxes\[1\] is on meta but the features"),
    ([torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 1.0]])], ValueError, "x2 >= x1"),
    (torch.zeros(2, 4), ValueError, "boxes must be a list"),
])
def test_bad_boxes(boxes, error, match):
    fgd = kdops.nn.FGDLoss(4, 4)
    with pytest.raises(error, match=match):
        fgd(torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6), boxes)


def test_feature_shapes_must_match():
    with pytest.raises(ValueError, match="must have the same shape"):
        kdops.nn.FGDLoss(4, 4)(torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 7), [torch.zeros(0, 4)] * 2)


@pytest.mark.parametrize("name,value,match", [
    ("lambda_", float("nan"), "lambda_ must be a finite number, got nan"),
    ("alpha", float("inf"), "alpha must be a finite number, got inf"),
    ("temperature", 1e-39, "temperature must be a finite number >= 1e-30"),
])
def test_bad_hyper_parameters_are_refused_when_built(name, value, match):
    """Checked in __init__ (was: FGDLoss(lambda_=nan) accepted, and only a NaN loss showed it)."""
    with pytest.raises(ValueError, match=rf"kdops.nn.FGDLoss: {match}"):
        kdops.nn.FGDLoss(8, 8, **{name: value})
