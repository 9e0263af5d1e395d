"""The Triton kernels' sums keep float32 round-off however long a lane's loop is.

A kernel that adds one tile per loop iteration into a [BLOCK] accumulator makes each lane add
n / BLOCK terms in sequence (2^20 of them on a 2^31-pixel plane). Here every lane adds 512 terms
of the form 1 + k/8 + 2^-17: once a float32 lane sum passes ~2^8 each addition drops the 2^-17, so
a plain lane sum is 2e-6..3e-5 off (30 to 500 round-offs), while the compensated sums (kahan_add in
kdops/triton/_reduce.py) stay within a few round-offs. Each case runs one kernel through its
wrapper, or launches it directly with synthetic partials where the wrapper would need a huge map.
"""

import math

import pytest
import torch
import triton.language as tl

from kdops._layout import FEATURE_PASS_PARTIALS, FEATURE_PASS_SOFTMAXES, LOSSES, NORMALIZERS
from kdops.triton import (_fgd, _reduce, attention_masks, cwd_loss, feature_imitation, fgd_feature_pass,
                          fgd_focal_loss, gc_context, pkd_loss, relation_mse)
from support.backends import CUDA, require_backend

DEVICE = "cuda" if CUDA else "cpu"
pytestmark = [pytest.mark.triton, require_backend("triton", DEVICE)]

LOW = 2.0 ** -17  # below half an ulp of a float32 sum >= 2^8
TERMS = 512  # terms per lane in every case
PLANE = (1, 1, TERMS, 2048)  # row kernels tile 2048 pixels: TERMS per lane
RTOL = 5e-7  # ~8 float32 round-offs (these sums: <= 1.4e-7); a plain lane sum is 2e-6..3e-5 off here
L1 = LOSSES.index("l1")


def _terms(shape, seed=0):
    """1 + k/8 + 2^-17 with k random in 0..3, float32 (every value exact)."""
    g = torch.Generator().manual_seed(seed)
    return (1.0 + LOW + torch.randint(0, 4, shape, generator=g).double() / 8).float().to(DEVICE)


def _check(actual, expected, rtol=RTOL):
    actual, expected = torch.as_tensor(actual).double().cpu(), torch.as_tensor(expected).double().cpu()
    err = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert err < rtol, f"relative error {err:.3e}"


def test_feature_imitation():
    s, t = _terms(PLANE), torch.zeros(PLANE, device=DEVICE)
    out, _ = feature_imitation.forward(s, t, None, L1, NORMALIZERS.index("batch"))
    _check(out, s.double().sum())
    # The mask sum of normalize="mask" runs over all N*H*W pixels in 1024 lanes.
    mask = _terms(PLANE[:1] + PLANE[2:], seed=1) / 2
    out, norm = feature_imitation.forward(s, t, mask, L1, NORMALIZERS.index("mask"))
    _check(norm, mask.double().sum())
    _check(out, (s.double() * mask.double()).sum() / mask.double().sum())


def test_relation_mse():
    s, t = _terms(PLANE), torch.zeros(PLANE, device=DEVICE)
    zero = torch.zeros(1, 1, device=DEVICE)
    loss, row_sum = relation_mse.forward(s, t, zero, zero)
    _check(row_sum, s.double().sum())
    _check(loss, (s.double() ** 2).sum())


def test_cwd_loss_row_sums():
    tau = 2.0
    x = torch.full(PLANE, tau * math.log1p(-LOW), device=DEVICE)  # exp((x - max) / tau) = 1 - 2^-17
    x.view(-1)[0] = 0.0
    _, stats = cwd_loss.forward(x, x.clone(), tau)
    exp_sum = torch.exp(x.double() / tau).sum()
    _check(stats[0, 1].double().exp(), exp_sum)  # the stats hold log sum_s and log sum_t
    _check(stats[0, 3].double().exp(), exp_sum)


def test_pkd_loss_means():
    s, t = _terms(PLANE), _terms(PLANE, seed=1) * 2
    _, stats = pkd_loss.forward(s, t)
    _check(stats[0, 0], s.double().mean())
    _check(stats[0, 2], t.double().mean())


def test_scaled_softmax_rows():
    """_common.scaled_softmax_row (spatial masks) and scaled_softmax_grad_row (their backward)."""
    length, scale = 1024 * TERMS, 0.5
    x = torch.full((1, length), math.log1p(-LOW) / scale, device=DEVICE)
    x[0, 0] = 0.0
    out = torch.empty_like(x)
    attention_masks._spatial_kernel[(1,)](x, out, length, scale, BLOCK=1024, ACC=tl.float32)
    _check(out, length * torch.softmax(x.double() * scale, dim=1))
    a, g = _terms((1, length)), torch.full((1, length), 2.0, device=DEVICE)
    grad = torch.empty_like(a)
    attention_masks._softmax_grad_kernel[(1,)](a, g, grad, length, 1.0, 1.0, BLOCK=1024, ACC=tl.float32)
    a64 = a.double()
    _check(grad, a64 * (2.0 - (a64 * 2.0).sum() / length))


def test_tile_merges():
    """Per-channel sums over the tiles of a map (attention masks, GcBlock weight gradient and context)."""
    tiles, channels = TERMS, 16
    part = _terms((1, tiles, channels))
    k, out = torch.empty(1, channels, device=DEVICE), torch.empty(1, channels, device=DEVICE)
    attention_masks._channel_kernel[(1,)](part, k, out, channels, tiles, 1.0, BLOCK_C=16, ACC=tl.float32)
    _check(k, part.double().sum(1))

    total = torch.empty(channels, device=DEVICE)
    _fgd.sum_rows_kernel[(1,)](part, total, tiles, channels, BLOCK_C=16, ACC=tl.float32)
    _check(total, part.double().sum(1)[0])

    tile_max, tile_sum = torch.zeros(1, tiles, device=DEVICE), _terms((1, tiles), seed=1)
    ctx, stats = torch.empty(1, channels, device=DEVICE), torch.empty(1, 2, device=DEVICE)
    gc_context._merge_kernel[(1,)](part, tile_max, tile_sum, ctx, stats, channels, tiles, BLOCK_T=16,
                                   BLOCK_C=16, ACC=tl.float32)
    _check(stats[0, 1], tile_sum.double().sum())
    _check(ctx, part.double().sum(1) / tile_sum.double().sum())


def test_feature_pass_merge():
    tiles, channels = TERMS, 16
    partials, softmaxes = len(FEATURE_PASS_PARTIALS), len(FEATURE_PASS_SOFTMAXES)
    part = _terms((tiles, partials, channels))
    stats = torch.zeros(tiles, 2 * softmaxes, device=DEVICE)  # softmax k: (max, sum) at (2 k, 2 k + 1)
    stats[:, 1::2] = _terms((tiles, softmaxes), seed=1)  # the tiles' softmax sums, all at max 0
    outs = [torch.empty(1, channels, device=DEVICE) for _ in range(partials)]  # in the partials' order
    gc_s, gc_t, att_z = (torch.empty(1, 2, device=DEVICE), torch.empty(1, 2, device=DEVICE),
                         torch.empty(1, device=DEVICE))
    fgd_feature_pass._merge_kernel[(1, 1)](part, stats, *outs, gc_s, gc_t, att_z, channels, tiles, 2.0,
                                           BLOCK_T=16, BLOCK_C=16, ACC=tl.float32)  # att_scale: the maxima are 0
    sums, z = part.double().sum(0), stats.double().sum(0)[1::2]
    p, q = FEATURE_PASS_PARTIALS.index, FEATURE_PASS_SOFTMAXES.index
    for name in ("abs_s", "abs_t", "diff", "fg", "bg"):
        _check(outs[p(name)], sums[p(name)])
    _check(outs[p("ctx_s")], sums[p("ctx_s")] / z[q("gc_s")])
    _check(outs[p("ctx_t")], sums[p("ctx_t")] / z[q("gc_t")])
    _check(att_z, z[q("att")])
    _check(gc_s[0, 1], z[q("gc_s")])
    _check(gc_t[0, 1], z[q("gc_t")])


def test_focal_loss_rows():
    s, t = _terms(PLANE), torch.zeros(PLANE, device=DEVICE)
    hw = PLANE[2] * PLANE[3]
    fg, bg = _terms((1, hw), seed=1), _terms((1, hw), seed=2) / 4
    t_sp, t_ch = torch.ones(1, hw, device=DEVICE), torch.ones(1, 1, device=DEVICE)
    fg_part, bg_part = torch.empty(1, device=DEVICE), torch.empty(1, device=DEVICE)
    fgd_focal_loss._feature_kernel[(1,)](s, t, fg, bg, t_sp, t_ch, fg_part, bg_part, 1, hw, BLOCK=2048,
                                         ACC=tl.float32)
    s2 = s.double().reshape(1, hw) ** 2
    _check(fg_part, (s2 * fg.double()).sum())
    _check(bg_part, (s2 * bg.double()).sum())
    # The attention term's L1 row sums (channel row of 16, pixel row of 1024 * TERMS).
    length = 1024 * TERMS
    a_sp, a_ch = _terms((1, length), seed=3), _terms((1, 16), seed=4)
    zeros_sp, zeros_ch = torch.zeros_like(a_sp), torch.zeros_like(a_ch)
    att = torch.empty(1, device=DEVICE)
    _fgd.attention_kernel[(1,)](a_sp, zeros_sp, a_ch, zeros_ch, torch.empty_like(a_sp), torch.empty_like(a_ch), att,
                                16, length, 1.0, 1.0, BLOCK_HW=1024, BLOCK_C=16, ACC=tl.float32)
    _check(att, a_sp.double().sum() + a_ch.double().sum())


def test_partials_mean():
    """_reduce.mean_kernel, which every head-loss forward ends with."""
    programs = 1024 * TERMS
    partial = torch.stack([_terms((programs,)), torch.ones(programs, device=DEVICE)], dim=1)
    out, norm = torch.empty((), device=DEVICE), torch.empty((), device=DEVICE)
    _reduce.mean_kernel[(1,)](partial, programs, out, norm, BLOCK=1024, ACC=tl.float32)
    assert norm.item() == programs
    _check(out, partial[:, 0].double().mean())


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_terms_propagate(value):
    """A compensated sum that meets inf or NaN gives what a plain sum gives (not NaN for inf)."""
    s, t = torch.ones(1, 1, 4, 64, device=DEVICE), torch.zeros(1, 1, 4, 64, device=DEVICE)
    s[0, 0, 1, 3] = value
    out, _ = feature_imitation.forward(s, t, None, L1, NORMALIZERS.index("batch"))
    assert out.item() == value if value == value else math.isnan(out.item())
