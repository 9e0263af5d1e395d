"""Triton kernels of PKD (docs/math.md §6): csrc/include/kdops/math/pkd_loss.h. Forward: one program per
channel reads its N segments of H*W values three times (means, centred squares, squared
difference of the standardised maps) and writes the channel statistics; one program adds the D_c
in channel order. Backward: one elementwise pass with per-channel coefficients.
"""

import torch
import triton
import triton.language as tl

from kdops.reference import pkd_loss as reference
from kdops.triton._common import acc_dtype, block_for, tl_acc
from kdops.triton._reduce import scaled_sum_kernel

CHANNEL_STATS = 5  # (mean_s, std_s, mean_t, std_t, D_c)
EPS = tl.constexpr(reference.EPS)  # a plain Python global is a NameError in a compiled kernel


@triton.jit
def _channel_kernel(s_ptr, t_ptr, stats_ptr, N, C, HW, BLOCK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = N * HW
    sx = tl.zeros([BLOCK], ACC)
    sy = tl.zeros([BLOCK], ACC)
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            sx += tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            sy += tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
    mean_x = tl.sum(sx, axis=0) / m
    mean_y = tl.sum(sy, axis=0) / m
    vx = tl.zeros([BLOCK], ACC)
    vy = tl.zeros([BLOCK], ACC)
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            dx = tl.where(j < HW, tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC) - mean_x, 0.0)
            dy = tl.where(j < HW, tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC) - mean_y, 0.0)
            vx += dx * dx
            vy += dy * dy
    std_x = tl.sqrt(tl.sum(vx, axis=0) / (m - 1))
    std_y = tl.sqrt(tl.sum(vy, axis=0) / (m - 1))
    inv_ax = 1.0 / (std_x + EPS)
    inv_ay = 1.0 / (std_y + EPS)
    d = tl.zeros([BLOCK], ACC)
    for n in range(0, N):
        base = (n * C + c) * HW
        for start in range(0, HW, BLOCK):
            j = start + offs
            x = tl.load(s_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            y = tl.load(t_ptr + base + j, mask=j < HW, other=0.0).to(ACC)
            diff = tl.where(j < HW, (x - mean_x) * inv_ax - (y - mean_y) * inv_ay, 0.0)
            d += diff * diff
    st = stats_ptr + c * 5
    tl.store(st + 0, mean_x)
    tl.store(st + 1, std_x)
    tl.store(st + 2, mean_y)
    tl.store(st + 3, std_y)
    tl.store(st + 4, tl.sum(d, axis=0))


def forward(student, teacher):
    s, t = student.contiguous(), teacher.contiguous()
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((c, CHANNEL_STATS), dtype=acc, device=s.device)
    _channel_kernel[(c,)](s, t, stats, n, c, hw, BLOCK=block_for(hw, 2048), ACC=tl_acc(acc))
    scaled_sum_kernel[(1,)](stats, c, CHANNEL_STATS, 4, 1.0 / (2.0 * c * n * hw), out, BLOCK=1024, ACC=tl_acc(acc))
    return out, stats


@triton.jit
def _grad_kernel(grad_ptr, s_ptr, t_ptr, stats_ptr, out_ptr, C, HW, m, scale, BLOCK: tl.constexpr,
                 ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    st = stats_ptr + (row % C) * 5
    mean_x, std_x, mean_y, std_y, d = tl.load(st), tl.load(st + 1), tl.load(st + 2), tl.load(st + 3), tl.load(st + 4)
    ax = std_x + EPS
    ay = std_y + EPS
    sxx = (m - 1) * std_x * std_x / (ax * ax)
    syy = (m - 1) * std_y * std_y / (ay * ay)
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
    _grad_kernel[(n * c, triton.cdiv(hw, block))](grad.to(acc).reshape(1), s, t, channel_stats.contiguous(), out, c,
                                                   hw, float(m), 1.0 / (c * m), BLOCK=block, ACC=tl_acc(acc))
    return out
