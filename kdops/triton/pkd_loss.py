"""Triton kernels of PKD (docs/math.md §6): csrc/include/kdops/math/pkd_loss.h. Forward: one program per
channel reads its N segments of H*W values three times (means, centred squares, squared
difference of the standardised maps) and writes the channel statistics; one program adds the D_c
in channel order. Backward: one elementwise pass with per-channel coefficients.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import PKD_STATS
from kdops.reference import pkd_loss as reference
from kdops.triton._common import (acc_dtype, acc_scalar, block_for, layout_constants, program_id64, row_tile, size64,
                                    tl_acc, warps_for)
from kdops.triton._reduce import kahan_add, kahan_total, scaled_sum_kernel

CHANNEL_STATS, MEAN_S, STD_S, MEAN_T, STD_T, SQUARED_DIFF = layout_constants(PKD_STATS)
EPS = tl.constexpr(reference.EPS)  # a plain Python global is a NameError in a compiled kernel


@triton.jit
def _unit_scale(amax):
    """About 2^-e with 2^e > amax (1 when amax is 0, e >= -125): the math header's unit_scale. An exponent off by
    one (log2 is approximate) only moves the scaled values into [-4, 4]; the std divides the scale out again."""
    e = tl.where(amax > 0, tl.ceil(tl.log2(tl.where(amax > 0, amax, 1.0))), 0.0)
    return tl.exp2(-tl.maximum(e, -125.0))


@triton.jit
def _channel_kernel(s_ptr, t_ptr, stats_ptr, N, C, HW, M, m_scale: tl.float64, BLOCK: tl.constexpr,
                    ACC: tl.constexpr):
    c = program_id64(0)
    HW = size64(HW)
    offs = tl.arange(0, BLOCK)
    m = M  # N * H * W from the host: N * HW in the kernel would be int32 and wrap at 2^31 values
    m_scale = acc_scalar(m_scale, ACC)  # 2^-p >= 1/M: the scaled sums cannot overflow (math header)
    zero = tl.zeros([BLOCK], ACC)
    sx, sy, sx_c, sy_c, amax_x, amax_y = zero, zero, zero, zero, zero, zero
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            x = tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            y = tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            sx, sx_c = kahan_add(sx, sx_c, x * m_scale)
            sy, sy_c = kahan_add(sy, sy_c, y * m_scale)
            amax_x = tl.maximum(amax_x, tl.abs(x))
            amax_y = tl.maximum(amax_y, tl.abs(y))
    m_scaled = m * m_scale
    mean_x = kahan_total(sx, sx_c) / m_scaled
    mean_y = kahan_total(sy, sy_c) / m_scaled
    scale_x = _unit_scale(tl.max(amax_x, axis=0))
    scale_y = _unit_scale(tl.max(amax_y, axis=0))
    vx, vy, vx_c, vy_c = zero, zero, zero, zero
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            x = tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            y = tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            dx = tl.where(j < HW, x * scale_x - mean_x * scale_x, 0.0)
            dy = tl.where(j < HW, y * scale_y - mean_y * scale_y, 0.0)
            vx, vx_c = kahan_add(vx, vx_c, dx * dx)
            vy, vy_c = kahan_add(vy, vy_c, dy * dy)
    std_x = tl.sqrt(kahan_total(vx, vx_c) / (m - 1)) / scale_x
    std_y = tl.sqrt(kahan_total(vy, vy_c) / (m - 1)) / scale_y
    inv_ax = 1.0 / (std_x + EPS)
    inv_ay = 1.0 / (std_y + EPS)
    d, d_c = zero, zero
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            x = tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            y = tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            diff = tl.where(j < HW, (x - mean_x) * inv_ax - (y - mean_y) * inv_ay, 0.0)
            d, d_c = kahan_add(d, d_c, diff * diff)
    st = stats_ptr + c * CHANNEL_STATS
    tl.store(st + MEAN_S, mean_x)
    tl.store(st + STD_S, std_x)
    tl.store(st + MEAN_T, mean_y)
    tl.store(st + STD_T, std_y)
    tl.store(st + SQUARED_DIFF, kahan_total(d, d_c))


def mean_scale(m: int) -> float:
    """2^-p with 2^p >= m (the math header's mean_scale)."""
    return 2.0 ** -max(m - 1, 0).bit_length()


def forward(student, teacher):
    s, t = student.contiguous(), teacher.contiguous()
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((c, len(PKD_STATS)), dtype=acc, device=s.device)
    block = block_for(hw, 2048)
    _channel_kernel[(c,)](s, t, stats, n, c, hw, n * hw, mean_scale(n * hw), BLOCK=block, ACC=tl_acc(acc),
                          num_warps=warps_for(block, acc))
    scaled_sum_kernel[(1,)](stats, c, len(PKD_STATS), PKD_STATS.index("squared_diff"), 1.0 / (2.0 * c * n * hw), out,
                            BLOCK=1024, ACC=tl_acc(acc))
    return out, stats


@triton.jit
def _grad_kernel(grad_ptr, s_ptr, t_ptr, stats_ptr, out_ptr, C, HW, tiles, m: tl.float64, scale: tl.float64,
                 BLOCK: tl.constexpr, ACC: tl.constexpr):
    m, scale = acc_scalar(m, ACC), acc_scalar(scale, ACC)
    row, tile = row_tile(tiles)
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    st = stats_ptr + (row % C) * CHANNEL_STATS
    mean_x, std_x, mean_y, std_y = tl.load(st + MEAN_S), tl.load(st + STD_S), tl.load(st + MEAN_T), tl.load(st + STD_T)
    d = tl.load(st + SQUARED_DIFF)
    ax = std_x + EPS
    ay = std_y + EPS
    rx = std_x / ax  # <= 1: (m - 1) * std^2 itself can overflow
    ry = std_y / ay
    sxx = (m - 1) * rx * rx
    syy = (m - 1) * ry * ry
    sxy = (sxx + syy - d) / 2
    corr = tl.where(std_x == 0, 0.0, (sxx - sxy) / ((m - 1) * tl.where(std_x == 0, 1.0, std_x)))
    coef = tl.load(grad_ptr).to(ACC) * scale
    x = (tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - mean_x) / ax
    y = (tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - mean_y) / ay
    tl.store(out_ptr + row * HW + j, (coef * ((x - y) / ax - x * corr)).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, channel_stats):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    block = block_for(hw, 1024)
    m = n * hw
    tiles = triton.cdiv(hw, block)
    _grad_kernel[(n * c * tiles,)](grad.to(acc).reshape(1), s, t, channel_stats.contiguous(), out, c, hw, tiles,
                                   float(m), 1.0 / (c * m), BLOCK=block, ACC=tl_acc(acc))
    return out
