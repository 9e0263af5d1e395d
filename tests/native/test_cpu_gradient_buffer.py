"""Full-size CPU gradients of 8 MB and more reuse freed buffers of the same size (csrc/cpu/gradient_buffer.h).
The cache must change no value, never hand out memory a live tensor uses, and stay within its bound."""

import os
import subprocess
import sys

import pytest
import torch

import kdops
from support.backends import require_backend

pytestmark = require_backend("cpu")

SHAPE = (2, 32, 160, 256)  # float32: 10 MiB, above the 8 MB the cache starts at (the other tests stay below)
BYTES = 2 * 32 * 160 * 256 * 4


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, requires_grad=True), torch.randn(SHAPE, generator=g)


def _relation_grad(s, t, backend="cpu"):
    s.grad = None
    zeros = torch.zeros(SHAPE[:2])
    kdops.relation_mse(s, t, delta_s=zeros, delta_t=zeros, backend=backend).backward()
    grad, s.grad = s.grad, None
    return grad


@pytest.fixture(autouse=True)
def empty_cache():
    kdops.empty_cpu_gradient_cache()
    yield
    kdops.empty_cpu_gradient_cache()


def test_a_freed_gradient_is_reused_and_the_values_stay_right():
    s, t = _inputs(0)
    first = _relation_grad(s, t)
    address = first.data_ptr()
    del first
    assert kdops.cpu_gradient_cache_bytes() == BYTES
    second = _relation_grad(s, t)
    assert second.data_ptr() == address
    assert kdops.cpu_gradient_cache_bytes() == 0
    torch.testing.assert_close(second, _relation_grad(s, t, backend="reference"))


def test_live_gradients_never_share_memory():
    s, t = _inputs(1)
    first = _relation_grad(s, t)
    kept = first.clone()
    second = _relation_grad(*_inputs(2))
    assert second.data_ptr() != first.data_ptr()
    assert torch.equal(first, kept)


def test_a_cached_gradient_resizes_like_any_tensor():
    """The storage is resizable (GradientAllocator): growing keeps the values and hands the old buffer back
    to the cache; shrinking keeps the leading values."""
    s, t = _inputs(3)
    grad = _relation_grad(s, t)
    expected = grad.clone()
    grad.resize_(2 * grad.numel())  # grows: new memory, the old buffer goes back to the cache
    assert kdops.cpu_gradient_cache_bytes() == BYTES
    torch.testing.assert_close(grad[: expected.numel()], expected.reshape(-1))
    grad[expected.numel():] = 1.0
    assert (grad[expected.numel():] == 1.0).all()
    grad.resize_(5)
    torch.testing.assert_close(grad, expected.reshape(-1)[:5])
    again = _relation_grad(s, t)  # takes the cached buffer: still right
    torch.testing.assert_close(again, expected)
    del grad, again


def test_small_gradients_are_not_cached():
    s = torch.randn(2, 8, 16, 16, requires_grad=True)
    kdops.cwd_loss(s, torch.randn(2, 8, 16, 16), backend="cpu").backward()
    s.grad = None
    assert kdops.cpu_gradient_cache_bytes() == 0


def test_empty_cache_releases_what_it_held():
    s, t = _inputs(3)
    _relation_grad(s, t)  # freed at once: cached
    assert kdops.empty_cpu_gradient_cache() == BYTES
    assert kdops.cpu_gradient_cache_bytes() == 0


_SCRIPT = """
import sys, torch, kdops
g = torch.Generator().manual_seed(0)
s = torch.randn(2, 32, 160, 256, generator=g, requires_grad=True)
t = torch.randn(2, 32, 160, 256, generator=g)
grads = {}
for name, loss in (("cwd", lambda: kdops.cwd_loss(s, t, tau=2.0, backend="cpu")),
                   ("imitation", lambda: kdops.feature_imitation(s, t, backend="cpu")),
                   ("cwd_again", lambda: kdops.cwd_loss(s, t, tau=2.0, backend="cpu"))):
    loss().backward()
    grads[name] = s.grad.clone()
    s.grad = None
torch.save({"grads": grads, "cached": kdops.cpu_gradient_cache_bytes()}, sys.argv[1])
"""


def _run(tmp_path, cache_mb):
    out = tmp_path / f"grads_{cache_mb}.pt"
    env = {**os.environ, "KDOPS_CPU_GRADIENT_CACHE_MB": cache_mb}
    subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, check=True, timeout=300)
    return torch.load(out)


def test_the_cache_changes_no_value_and_respects_its_bound(tmp_path):
    cached, off, too_small = _run(tmp_path, "1024"), _run(tmp_path, "0"), _run(tmp_path, "9")
    assert cached["cached"] == BYTES and off["cached"] == 0 and too_small["cached"] == 0
    for name in cached["grads"]:
        assert cached["grads"][name].abs().sum() > 0, name
        assert torch.equal(cached["grads"][name], off["grads"][name]), name
        assert torch.equal(cached["grads"][name], too_small["grads"][name]), name
