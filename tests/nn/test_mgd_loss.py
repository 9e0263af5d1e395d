"""kdops.nn.MGDLoss: against a port of the official MGD loss (tests/support/official_mgd.py) in float64, its random
mask (the official rule, its own generator, a state that resumes exactly), dropped pixels, presets, bad input,
and MGD in kdops.nn.FeatureDistiller."""

import copy
import io

import pytest
import torch

import kdops
from kdops.nn.mgd import PRESETS, RandomPixelMask, _splitmix64, fork_masks
from support.backends import on_cpu
from support.cuda_emu import NAME as CUDA_EMU
from support.numerics import randn
from support.official_mgd import official_from

H, W = 9, 13


def _close(actual, expected, what):
    atol = 1e-9 * float(expected.detach().abs().max()) + 1e-15
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=atol, msg=lambda m: f"{what}: {m}")


def _uniform(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


# Every backend of the squared-error op that runs on CPU tensors.
@pytest.mark.parametrize("backend", on_cpu("reference", "cpu", CUDA_EMU, "triton"))
@pytest.mark.parametrize("channels", [(6, 6), (4, 6)])
@pytest.mark.parametrize("family", ["two_stage", "one_stage"])
def test_matches_official_port(backend, channels, family):
    torch.manual_seed(1)
    mgd = kdops.nn.MGDLoss.preset(family, *channels, backend=backend).double()
    official = official_from(mgd)
    student = randn((3, channels[0], H, W), torch.float64, "cpu", 2, requires_grad=True)
    student_ref = student.detach().clone().requires_grad_()
    teacher = randn((3, channels[1], H, W), torch.float64, "cpu", 3)
    u = _uniform((3, 1, H, W), 4)
    keep = (u <= 1 - mgd.lambda_).squeeze(1)
    assert 0 < int(keep.sum()) < keep.numel()

    loss = mgd(student, teacher, keep)
    expected = official(student_ref, teacher, u)
    _close(loss, expected, "loss")
    loss.backward()
    expected.backward()
    _close(student.grad, student_ref.grad, "student gradient")
    official_grads = dict(official.named_parameters())
    for name, p in mgd.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        _close(p.grad, official_grads[name].grad, f"gradient of {name}")
    assert mgd.masks.draws == 0  # a given mask draws nothing


def test_draws_the_official_mask_from_its_own_generator():
    """Draw k is torch.rand((N, H, W)) from a generator seeded splitmix64(seed, k, rank 0), kept where
    u <= 1 - lambda (the official rule); the loss of a drawn mask is the loss of that mask given."""
    mgd = kdops.nn.MGDLoss(5, 5, seed=123).double()
    student, teacher = randn((2, 5, H, W), torch.float64, "cpu", 0), randn((2, 5, H, W), torch.float64, "cpu", 1)
    for k in range(3):
        u = torch.rand((2, H, W), generator=torch.Generator().manual_seed(_splitmix64(123, k, 0)))
        keep = u <= 1 - 0.65
        assert mgd.masks.draws == k
        drawn = mgd(student, teacher)
        torch.testing.assert_close(drawn, mgd(student, teacher, keep), rtol=0, atol=0)
    assert mgd.masks.draws == 3


def test_drop_rate_is_lambda_and_draws_differ():
    masks = RandomPixelMask(0.45, seed=7)
    first, second = masks(4, 300, 300, "cpu"), masks(4, 300, 300, "cpu")
    for keep in (first, second):
        assert abs((1 - keep.double().mean()) - 0.45) < 0.005  # 360,000 pixels: ~6 standard deviations
    assert not torch.equal(first, second)
    assert RandomPixelMask(0.0, seed=7)(2, 30, 30, "cpu").all()  # lambda 0 drops nothing


def test_default_seed_comes_from_torchs_global_generator():
    """Two levels get different masks; torch.manual_seed (a run's seed) fixes both."""
    torch.manual_seed(5)
    a, b = kdops.nn.MGDLoss(4, 4), kdops.nn.MGDLoss(4, 4)
    torch.manual_seed(5)
    a2 = kdops.nn.MGDLoss(4, 4)
    assert a.masks.seed != b.masks.seed and a.masks.seed == a2.masks.seed
    assert not torch.equal(a.masks(2, 20, 20, "cpu"), b.masks(2, 20, 20, "cpu"))


def test_a_saved_state_continues_the_mask_sequence_exactly():
    """The mask state is in state_dict (an int64 tensor, loadable with weights_only=True): a module that
    loads it after 3 draws computes the uninterrupted module's 4th loss and gradients bit for bit."""
    torch.manual_seed(0)
    whole = kdops.nn.MGDLoss(4, 6)
    student, teacher = torch.randn(2, 4, H, W), torch.randn(2, 6, H, W)
    for _ in range(3):
        whole(student, teacher)
    buffer = io.BytesIO()
    torch.save(whole.state_dict(), buffer)
    state = whole.state_dict()["masks._extra_state"]
    assert state.dtype == torch.int64 and state.tolist() == [whole.masks.seed, 3]

    resumed = kdops.nn.MGDLoss(4, 6, seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.masks.seed, resumed.masks.draws) == (whole.masks.seed, 3)
    fresh = kdops.nn.MGDLoss(4, 6, seed=99)
    fresh.load_state_dict({k: v for k, v in whole.state_dict().items() if k != "masks._extra_state"}, strict=False)
    outs = []
    for m in (whole, resumed, fresh):
        s = student.clone().requires_grad_()
        loss = m(s, teacher)
        loss.backward()
        outs.append((loss, s.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])  # without the mask state the draw differs


def test_fork_masks_leaves_the_sequence_as_it_was():
    """A forward inside fork_masks (a check before training) draws, and the masks after it are the ones
    the modules would have drawn without it."""
    torch.manual_seed(0)
    pair = torch.nn.ModuleList([kdops.nn.MGDLoss(4, 4), kdops.nn.MGDLoss(4, 4)])
    twin = copy.deepcopy(pair)
    with fork_masks(pair):
        inside = [m.masks(2, 8, 8, "cpu") for m in pair]
    assert all(m.masks.draws == 0 for m in pair)
    for a, b, first in zip(pair, twin, inside):
        nxt = a.masks(2, 8, 8, "cpu")
        assert torch.equal(nxt, b.masks(2, 8, 8, "cpu")) and torch.equal(nxt, first)


@pytest.mark.parametrize("channels", [(5, 5), (3, 5)], ids=["no-align", "align"])
def test_dropped_pixels_never_reach_the_loss_or_a_gradient(channels):
    """NaN and Inf in the student at dropped pixels: the loss and every gradient are those of a student
    that holds 0 there (docs/math.md §0: selects, not products); the student's gradient is 0 there."""
    torch.manual_seed(0)
    mgd = kdops.nn.MGDLoss(*channels, alpha=1.0, lambda_=0.5).double()
    keep = _uniform((2, H, W), 1) <= 0.5
    clean = randn((2, channels[0], H, W), torch.float64, "cpu", 2)
    clean = torch.where(keep.unsqueeze(1), clean, 0)
    dirty = clean.clone()
    dirty[:, 0][~keep] = float("nan")
    dirty[:, -1][~keep] = float("inf")
    teacher = randn((2, channels[1], H, W), torch.float64, "cpu", 3)
    results = []
    for s in (clean, dirty):
        s = s.clone().requires_grad_()
        loss = mgd(s, teacher, keep)
        grads = torch.autograd.grad(loss, [s, *mgd.parameters()])
        results.append((loss, grads))
    assert torch.isfinite(results[1][0])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.count_nonzero(results[1][1][0].permute(1, 0, 2, 3)[:, ~keep]) == 0


def test_the_teacher_is_a_constant():
    mgd = kdops.nn.MGDLoss(4, 4)
    student, teacher = torch.randn(2, 4, H, W, requires_grad=True), torch.randn(2, 4, H, W, requires_grad=True)
    mgd(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_presets_are_the_official_values():
    """yzd-v/MGD det/configs: RetinaNet and RepPoints alpha_mgd 2e-5, lambda_mgd 0.65; Faster/Mask R-CNN 5e-7, 0.45."""
    assert PRESETS == {"two_stage": dict(alpha=5e-7, lambda_=0.45), "one_stage": dict(alpha=2e-5, lambda_=0.65)}
    two = kdops.nn.MGDLoss.preset("two_stage", 4, 8, lambda_=0.3)
    assert (two.alpha, two.lambda_) == (5e-7, 0.3) and two.align is not None
    assert kdops.nn.MGDLoss(8, 8).align is None
    with pytest.raises(ValueError, match="family must be one of"):
        kdops.nn.MGDLoss.preset("retinanet", 4, 8)


def test_empty_batch_gives_zero_on_the_graph():
    mgd = kdops.nn.MGDLoss(4, 6)
    student = torch.randn(0, 4, H, W, requires_grad=True)
    loss = mgd(student, torch.randn(0, 6, H, W))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.shape == student.shape


def test_mixed_precision_under_autocast():
    mgd = kdops.nn.MGDLoss(4, 6)
    student = torch.randn(2, 4, H, W, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mgd(student, torch.randn(2, 6, H, W))
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16 and torch.isfinite(loss)


def test_compile():
    """fullgraph with a given mask; a drawn mask runs eagerly (a generator is not traceable), draws as the
    eager module does, and compiles once: the draw count is not guarded."""
    mgd = kdops.nn.MGDLoss(4, 6)
    student, teacher = torch.randn(2, 4, H, W, requires_grad=True), torch.randn(2, 6, H, W)
    keep = _uniform((2, H, W), 0) <= 0.35
    compiled = torch.compile(mgd, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(student, teacher, keep), mgd(student, teacher, keep))
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(mgd, backend=counting)
    state = mgd.masks.get_extra_state()
    outs = [compiled(student, teacher) for _ in range(3)]
    compiled_graphs = len(graphs)
    mgd.masks.set_extra_state(state)
    for out in outs:
        torch.testing.assert_close(out, mgd(student, teacher), rtol=0, atol=0)
    assert mgd.masks.draws == int(state[1]) + 3
    compiled(student, teacher)
    assert len(graphs) == compiled_graphs  # no recompile as the draw count grows


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lambda_=1.0), ValueError,
     r"lambda_ \(the drop probability of a pixel\) must be a number in \[0, 1\)"),
    (dict(lambda_=-0.1), ValueError,
     r"lambda_ \(the drop probability of a pixel\) must be a number in \[0, 1\)"),
    (dict(lambda_=float("nan")), ValueError,
     r"lambda_ \(the drop probability of a pixel\) must be a number in \[0, 1\)"),
    (dict(alpha=-1e-5), ValueError, r"alpha \(the loss weight\) must be a finite number >= 0"),
    (dict(alpha=float("inf")), ValueError, r"alpha \(the loss weight\) must be a finite number >= 0"),
    (dict(alpha=float("nan")), ValueError, r"alpha \(the loss weight\) must be a finite number >= 0"),
    (dict(student_channels=0), ValueError, "student_channels must be an int >= 1"),
    (dict(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    (dict(seed=2**63), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.nn.MGDLoss(**{"student_channels": 4, "teacher_channels": 6, **kwargs})


@pytest.mark.parametrize("student,teacher,keep,error,match", [
    (torch.randn(2, 5, 4, 5), torch.randn(2, 6, 4, 5), None, ValueError,
     r"student must be an \(N, 4, H, W\) tensor \(student_channels=4\), got \(2, 5, 4, 5\)"),
    (torch.randn(2, 4, 4, 5), torch.randn(2, 4, 4, 5), None, ValueError, r"teacher must be an \(N, 6, H, W\)"),
    (torch.randn(4, 4, 5), torch.randn(2, 6, 4, 5), None, ValueError, r"student must be an \(N, 4, H, W\)"),
    (torch.randn(2, 4, 4, 5), torch.randn(2, 6, 4, 6), None, ValueError, "must have the same N, H and W"),
    (torch.randn(2, 4, 4, 5), torch.randn(2, 6, 4, 5, device="meta"), None, ValueError,
     "teacher is on meta but the student on cpu"),
    (torch.randn(2, 4, 4, 5), torch.randn(2, 6, 4, 5), torch.ones(2, 4, 5), ValueError,
     r"keep must be a bool tensor of shape \(N, H, W\) = \(2, 4, 5\)"),
    (torch.randn(2, 4, 4, 5), torch.randn(2, 6, 4, 5), torch.ones(2, 1, 4, 5, dtype=torch.bool), ValueError,
     r"keep must be a bool tensor of shape \(N, H, W\)"),
])
def test_bad_inputs(student, teacher, keep, error, match):
    with pytest.raises(error, match=match):
        kdops.nn.MGDLoss(4, 6)(student, teacher, keep)


@pytest.mark.parametrize("state", [torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3]), torch.tensor([5, -1]), {}])
def test_a_bad_saved_state_is_refused(state):
    with pytest.raises(ValueError, match=r"a saved mask state is an int64 tensor \[seed, draws\]"):
        RandomPixelMask(0.5, seed=1).set_extra_state(state)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_draws_on_the_device_without_a_host_sync():
    mgd = kdops.nn.MGDLoss(4, 6).cuda()
    student = torch.randn(2, 4, H, W, device="cuda", requires_grad=True)
    teacher = torch.randn(2, 6, H, W, device="cuda")
    mgd(student, teacher)  # first use: creates the device generator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mgd(student, teacher).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    state = mgd.state_dict()["masks._extra_state"]
    resumed = kdops.nn.MGDLoss(4, 6).cuda()
    resumed.load_state_dict(mgd.state_dict())
    torch.testing.assert_close(resumed(student, teacher), mgd(student, teacher), rtol=0, atol=0)
    assert state.device.type == "cpu"


# ---- in kdops.nn.FeatureDistiller ----------------------------------------------------------------------

class Net(torch.nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.stages = torch.nn.ModuleList()
        c = 3
        for w in widths:
            self.stages.append(torch.nn.Sequential(torch.nn.Conv2d(c, w, 3, stride=2, padding=1), torch.nn.ReLU()))
            c = w

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x.mean()


def _mask_states(distiller):
    return [m.masks.get_extra_state() for m in distiller.losses]


def _set_mask_states(distiller, states):
    for m, s in zip(distiller.losses, states, strict=True):
        m.masks.set_extra_state(s)


def test_feature_distiller_mgd_is_mgdloss_per_pair():
    """loss=("mgd", options): one MGDLoss per pair (its own align, no adapt), each level's value the
    module's on the same maps and masks; every pair draws its own mask; the family preset applies."""
    torch.manual_seed(0)
    student, teacher = Net([4, 8]), Net([8, 8])
    x = torch.randn(2, 3, 32, 32)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], example_inputs=(x,),
                                  loss=("mgd", {"family": "two_stage", "lambda_": 0.5}), weights={"stages.1": 0.5})
    assert [type(m) for m in d.losses] == [kdops.nn.MGDLoss] * 2
    assert all(isinstance(a, torch.nn.Identity) for a in d.adapt)
    assert [m.align is not None for m in d.losses] == [True, False]
    assert all((m.alpha, m.lambda_) == (5e-7, 0.5) for m in d.losses)
    assert len({m.masks.seed for m in d.losses}) == 2
    states = _mask_states(d)
    student(x)
    d.teacher_forward(x)
    out = d()
    with torch.no_grad():
        t_maps = [teacher.stages[0](x)]
        t_maps.append(teacher.stages[1](t_maps[0]))
    s0 = student.stages[0](x)
    s_maps = [s0, student.stages[1](s0)]
    _set_mask_states(d, states)
    expected = [d.losses[0](s_maps[0], t_maps[0]), 0.5 * d.losses[1](s_maps[1], t_maps[1])]
    torch.testing.assert_close(out["stages.0"], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(out["stages.1"], expected[1], rtol=0, atol=0)
    torch.testing.assert_close(out["total"], expected[0] + expected[1], rtol=0, atol=0)
    out["total"].backward()
    assert all(p.grad is not None for p in [*student.parameters(), *d.parameters()])
    d.remove()


def test_from_levels_and_hooks_draw_the_same_masks_from_the_same_state():
    torch.manual_seed(0)
    student, teacher = Net([4, 8]), Net([8, 8])
    x = torch.randn(2, 3, 32, 32)
    hooked = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], example_inputs=(x,), loss="mgd")
    plain = kdops.nn.FeatureDistiller.from_levels({"stages.0": (4, 2), "stages.1": (8, 4)},
                                                  {"stages.0": (8, 2), "stages.1": (8, 4)}, loss="mgd")
    plain.load_state_dict(hooked.state_dict())  # weights and mask states
    student(x)
    hooked.teacher_forward(x)
    expected = hooked()
    s0 = student.stages[0](x)
    with torch.no_grad():
        t0 = teacher.stages[0](x)
        t_maps = {"stages.0": t0, "stages.1": teacher.stages[1](t0)}
    out = plain.distil({"stages.0": s0, "stages.1": student.stages[1](s0)}, t_maps)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=0)
    assert _mask_states(plain)[0].tolist()[1] == 1
    hooked.remove()


def test_feature_distiller_refuses_bad_mgd_options():
    student, teacher = Net([4]), Net([8])
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"mgd takes the options \('family', 'alpha', 'lambda_'\), got \['tau'\]"):
        kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,), loss=("mgd", {"tau": 1.0}))
    with pytest.raises(ValueError, match=r"lambda_ .* in \[0, 1\), got 1.5"):
        kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,), loss=("mgd", {"lambda_": 1.5}))
