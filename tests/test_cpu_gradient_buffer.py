"""With KDOPS_CPU_HUGE_PAGES=1, full-size CPU gradients of 8 MB and more are advised to use huge pages
(csrc/cpu/gradient_buffer.h). The advice must change no value: the gradient is the same with and without."""

import os
import subprocess
import sys

import pytest
import torch

import kdops

pytestmark = pytest.mark.skipif(kdops.available_backends()["cpu"] != "available",
                                reason="the C++ extension is not built")

# 2 x 32 x 160 x 256 float32 = 10.5 MB: above the advice threshold (the other tests stay below it).
_SCRIPT = """
import sys, torch, kdops
g = torch.Generator().manual_seed(0)
s = torch.randn(2, 32, 160, 256, generator=g, requires_grad=True)
t = torch.randn(2, 32, 160, 256, generator=g)
kdops.cwd_loss(s, t, 2.0, backend="cpu").backward()
grad_cwd = s.grad
s.grad = None
kdops.feature_imitation(s, t, backend="cpu").backward()
torch.save({"cwd": grad_cwd, "imitation": s.grad}, sys.argv[1])
"""


def _gradients(tmp_path, huge_pages):
    out = tmp_path / f"grads_{huge_pages}.pt"
    env = {**os.environ, "KDOPS_CPU_HUGE_PAGES": huge_pages}
    subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, check=True, timeout=300)
    return torch.load(out)


def test_huge_page_advice_changes_no_value(tmp_path):
    advised, plain = _gradients(tmp_path, "1"), _gradients(tmp_path, "0")
    for name in advised:
        assert advised[name].abs().sum() > 0, name
        assert torch.equal(advised[name], plain[name]), name


def test_large_gradient_matches_the_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 32, 160, 256, generator=g, requires_grad=True)
    t = torch.randn(2, 32, 160, 256, generator=g)
    kdops.relation_mse(s, t, torch.zeros(2, 32), torch.zeros(2, 32), backend="cpu").backward()
    fused = s.grad
    s.grad = None
    kdops.relation_mse(s, t, torch.zeros(2, 32), torch.zeros(2, 32), backend="reference").backward()
    torch.testing.assert_close(fused, s.grad)
