"""Triton kernels of channel-wise distillation (docs/math.md §6): csrc/include/kdops/math/cwd_loss.h.
Forward: one program per (n, c) row (one pass for the maxima, one for the shifted exp-sums and the
near-row moments) writes the row statistics and tau^2 KL; one program adds the KLs in row order. Backward: one
elementwise pass.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import CWD_STATS
from kdops.triton._common import (acc_dtype, acc_scalar, block_for, layout_constants, program_id64, row_tile, size64,
                                    tl_acc, warps_for)
from kdops.triton._reduce import kahan_add, kahan_total, scaled_sum_kernel

ROW_STATS, MAX_S, LOG_SUM_S, MAX_T, LOG_SUM_T, NEAR, SHIFT = layout_constants(CWD_STATS)
NEAR_BOUND = tl.constexpr(0.125)  # a row is near when every |z| / tau <= NEAR_BOUND


@triton.jit
def expm1_gap_ratio(y):
    """(e^y - 1 - y) / y^2 to y^10."""
    p = y * 0.0 + 1.0
    for i in tl.static_range(10):
        p = 1.0 + y * p / (12 - i)
    return 0.5 * p


@triton.jit
def expm1_ratio(x):
    """(e^x - 1) / x to x^13."""
    p = x * 0.0 + 1.0
    for i in tl.static_range(13):
        p = 1.0 + x * p / (14 - i)
    return p


@triton.jit
def log1p_series(u, FIRST: tl.constexpr):
    """sum_k (-u)^k / (k + FIRST) to u^23: (u - log1p(u)) / u^2 for FIRST = 2, log1p(u) / u for FIRST = 1."""
    p = u * 0.0
    for i in tl.static_range(24):
        p = 1.0 / (23 - i + FIRST) - u * p
    return p


@triton.jit
def _row_kernel(s_ptr, t_ptr, stats_ptr, kl_ptr, HW, tau: tl.float64, inv_tau: tl.float64, BLOCK: tl.constexpr,
                ACC: tl.constexpr):
    tau, inv_tau, HW = acc_scalar(tau, ACC), acc_scalar(inv_tau, ACC), size64(HW)
    row = program_id64(0)
    offs = tl.arange(0, BLOCK)
    ms = tl.full([BLOCK], float("-inf"), ACC)
    mt = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, HW, BLOCK):
        j = start + offs
        ms = tl.maximum(ms, tl.load(s_ptr + row * HW + j, mask=j < HW, other=float("-inf")).to(ACC))
        mt = tl.maximum(mt, tl.load(t_ptr + row * HW + j, mask=j < HW, other=float("-inf")).to(ACC))
    max_s = tl.max(ms, axis=0)
    max_t = tl.max(mt, axis=0)
    c0 = ((tl.load(s_ptr + row * HW).to(ACC) - max_s) - (tl.load(t_ptr + row * HW).to(ACC) - max_t))
    zero = tl.zeros([BLOCK], ACC)
    sum_s, sum_t, a, m1, m2, zmax = zero, zero, zero, zero, zero, zero
    sum_s_c, sum_t_c, a_c, m1_c, m2_c = zero, zero, zero, zero, zero
    for start in range(0, HW, BLOCK):
        j = start + offs
        ok = j < HW
        ds = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - max_s
        dt = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - max_t
        et = tl.where(ok, tl.exp(dt * inv_tau), 0.0)
        z = tl.where(ok, (ds - dt) - c0, 0.0)
        sum_s, sum_s_c = kahan_add(sum_s, sum_s_c, tl.where(ok, tl.exp(ds * inv_tau), 0.0))
        sum_t, sum_t_c = kahan_add(sum_t, sum_t_c, et)
        a, a_c = kahan_add(a, a_c, tl.where(ok, et * (dt - ds), 0.0))
        m1, m1_c = kahan_add(m1, m1_c, et * z)
        m2, m2_c = kahan_add(m2, m2_c, et * z * z * expm1_gap_ratio(z * inv_tau))
        zmax = tl.maximum(zmax, tl.abs(z))
    total_s = kahan_total(sum_s, sum_s_c)
    total_t = kahan_total(sum_t, sum_t_c)
    tl.store(stats_ptr + row * ROW_STATS + MAX_S, max_s)
    tl.store(stats_ptr + row * ROW_STATS + LOG_SUM_S, tl.log(total_s))
    tl.store(stats_ptr + row * ROW_STATS + MAX_T, max_t)
    tl.store(stats_ptr + row * ROW_STATS + LOG_SUM_T, tl.log(total_t))
    # near rows: tau^2 KL = M2 - v^2 h(u) (no cancellation at large tau); far rows: tau^2 times the shifted KL
    big_m1 = kahan_total(m1, m1_c) / total_t
    big_m2 = kahan_total(m2, m2_c) / total_t
    v = big_m1 + big_m2 * inv_tau
    u = v * inv_tau
    near = tl.max(zmax, axis=0) * inv_tau <= NEAR_BOUND
    far_kl = (kahan_total(a, a_c) * inv_tau / total_t + tl.log(total_s) - tl.log(total_t)) * tau * tau
    tl.store(stats_ptr + row * ROW_STATS + NEAR, tl.where(near, 1.0, 0.0).to(ACC))
    tl.store(stats_ptr + row * ROW_STATS + SHIFT, tl.where(near, v * log1p_series(u, 1), 0.0).to(ACC))
    tl.store(kl_ptr + row, tl.where(near, big_m2 - v * v * log1p_series(u, 2), far_kl))


def forward(student, teacher, tau: float):
    s, t = student.contiguous(), teacher.contiguous()
    n, c, h, w = s.shape
    rows, hw = n * c, h * w
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((rows, len(CWD_STATS)), dtype=acc, device=s.device)
    kl = torch.zeros(max(rows, 1), dtype=acc, device=s.device)
    if rows > 0:
        # float64: 1024 lanes at 8 warps (at 16 warps a thread gets at most 128 registers, and the loop spills)
        block = block_for(hw, 1024 if acc == torch.float64 else 2048)
        _row_kernel[(rows,)](s, t, stats, kl, hw, tau, 1.0 / tau, BLOCK=block, ACC=tl_acc(acc),
                             num_warps=warps_for(block, acc))
    scaled_sum_kernel[(1,)](kl, rows, 1, 0, 1.0 / max(rows, 1), out, BLOCK=1024, ACC=tl_acc(acc))
    return out, stats


@triton.jit
def _grad_kernel(grad_ptr, s_ptr, t_ptr, stats_ptr, out_ptr, HW, tiles, tau: tl.float64, inv_tau: tl.float64,
                 scale: tl.float64, BLOCK: tl.constexpr, ACC: tl.constexpr):
    tau, inv_tau, scale = acc_scalar(tau, ACC), acc_scalar(inv_tau, ACC), acc_scalar(scale, ACC)
    row, tile = row_tile(tiles)
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    coef = tl.load(grad_ptr).to(ACC) * scale
    s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    max_s = tl.load(stats_ptr + row * ROW_STATS + MAX_S)
    max_t = tl.load(stats_ptr + row * ROW_STATS + MAX_T)
    pt = tl.exp((t - max_t) * inv_tau - tl.load(stats_ptr + row * ROW_STATS + LOG_SUM_T))
    if tl.load(stats_ptr + row * ROW_STATS + NEAR) != 0:  # near row: tau (P_s - P_t) = P_t w E(w / tau)
        c0 = (tl.load(s_ptr + row * HW).to(ACC) - max_s) - (tl.load(t_ptr + row * HW).to(ACC) - max_t)
        w = (((s - max_s) - (t - max_t)) - c0) - tl.load(stats_ptr + row * ROW_STATS + SHIFT)
        g = coef * (pt * w * expm1_ratio(w * inv_tau))
    else:
        ps = tl.exp((s - max_s) * inv_tau - tl.load(stats_ptr + row * ROW_STATS + LOG_SUM_S))
        g = coef * tau * (ps - pt)
    tl.store(out_ptr + row * HW + j, g.to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, row_stats, tau: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    block = block_for(hw, 1024)
    tiles = triton.cdiv(hw, block)
    _grad_kernel[(n * c * tiles,)](grad.to(acc).reshape(1), s, t, row_stats.contiguous(), out, hw, tiles, tau,
                                   1.0 / tau, 1.0 / (n * c), BLOCK=block, ACC=tl_acc(acc))
    return out
