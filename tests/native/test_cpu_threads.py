"""The CPU kernels split work over torch's intra-op threads and add partial sums in a fixed order:
every loss and gradient must be bit-for-bit the same on 1 thread and on several."""

import pytest
import torch

import kdops
from support.backends import require_backend

pytestmark = require_backend("cpu")


def _feature(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def _boxes_masks(n, h, w):
    boxes = [torch.tensor([[2.3, 3.1, 17.6, 20.4], [10.2, 5.7, 30.8, 12.9]]), torch.tensor([[0.6, 1.2, 8.4, 9.9]])]
    return kdops.box_masks(boxes[:n], (h, w))


# Shapes big enough that every kernel cuts its work into several chunks / pixel blocks.
N, C, H, W = 2, 24, 45, 47


def _cases():
    s, t = _feature((N, C, H, W), 0), _feature((N, C, H, W), 1)
    fg, bg = _boxes_masks(N, H, W)
    w_gc = _feature((C,), 2) * 0.1
    d_s, d_t = _feature((N, C), 3), _feature((N, C), 4)
    rows = 3000
    z_s, z_t = _feature((rows, 91), 5), _feature((rows, 91), 6)
    labels = torch.randint(-1, 91, (rows,), generator=torch.Generator().manual_seed(7))
    a_s, a_t = _feature((300_000,), 8), _feature((300_000,), 9)
    anchor_labels = torch.randint(-1, 2, (300_000,), generator=torch.Generator().manual_seed(10))
    r_s, r_t, r_y = _feature((rows, 4), 11), _feature((rows, 4), 12), _feature((rows, 4), 13)
    g_sp, g_ch = _feature((N, H, W), 14), _feature((N, C), 15)
    e_s, e_t = _feature((4 * 20_000, 17), 16), _feature((4 * 20_000, 17), 17)  # box edges of 20,000 anchors
    e_w = _feature((4 * 20_000,), 18).abs() * (torch.arange(4 * 20_000) % 7 == 0)
    return {
        "attention_masks": (lambda x: sum((m * g).sum() for m, g in zip(kdops.attention_masks(x, backend="cpu"),
                                                                          (g_sp, g_ch))), s),
        "cwd_loss": (lambda x: kdops.cwd_loss(x, t, tau=2.0, backend="cpu"), s),
        "pkd_loss": (lambda x: kdops.pkd_loss(x, t, backend="cpu"), s),
        "feature_imitation": (lambda x: kdops.feature_imitation(x, t, mask=fg, backend="cpu"), s),
        "fgd_focal_loss": (lambda x: kdops.fgd_focal_loss(x, t, fg=fg, bg=bg, backend="cpu"), s),
        "gc_context": (lambda x: kdops.gc_context(x, w_gc, backend="cpu").square().sum(), s),
        "relation_mse": (lambda x: kdops.relation_mse(x, t, delta_s=d_s, delta_t=d_t, backend="cpu"), s),
        "soft_cross_entropy": (lambda x: kdops.soft_cross_entropy(
            x, z_t, target=labels, temperature=2.0, mu=0.5, backend="cpu"), z_s),
        "soft_binary_cross_entropy": (lambda x: kdops.soft_binary_cross_entropy(
            x, a_t, target=anchor_labels, mu=0.5, backend="cpu"), a_s),
        "bounded_regression": (lambda x: kdops.bounded_regression(x, r_t, target=r_y, margin=0.1, backend="cpu"), r_s),
        "ld_loss": (lambda x: kdops.ld_loss(x, e_t, weight=e_w, normalize="weight", backend="cpu"), e_s),
        "quality_focal_kd": (lambda x: kdops.quality_focal_kd(x, z_t, beta=1.0, backend="cpu"), z_s),
        "quality_focal_kd_weighted": (lambda x: kdops.quality_focal_kd(
            x, z_t, weight=(labels >= 0).float(), beta=0.5, normalize="weight", backend="cpu"), z_s),
    }


def _run(fn, leaf, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = leaf.clone().requires_grad_()
        out = fn(x)
        out.backward()
        return out.detach(), x.grad
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("op", list(_cases()))
def test_same_bits_on_one_and_several_threads(op):
    fn, leaf = _cases()[op]
    one = _run(fn, leaf, 1)
    several = _run(fn, leaf, 4)
    assert torch.isfinite(one[0]) and one[1].abs().sum() > 0
    assert torch.equal(one[0], several[0]), f"{op}: loss differs between 1 and 4 threads"
    assert torch.equal(one[1], several[1]), f"{op}: gradient differs between 1 and 4 threads"
