"""Triton kernels of localization distillation (docs/math.md §11): a row's T^2 KL and its statistics are CWD's
(csrc/include/kdops/math/cwd_loss.h, the series of kdops/triton/cwd_loss.py), averaged over the row's bins and
weighted per row.

Forward: each program takes BLOCK_R rows (short rows: 16 or 17 bins), makes one pass over the bins for the row
maxima and one for the shifted exp-sums and the near-row moments, writes the rows' statistics and one (weighted
loss sum, weight sum) partial; a single program adds the partials in order and divides by Z. A row of weight 0
is not read (zero statistics). Backward: one pass from the saved statistics.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import CWD_STATS, LD_NORMALIZERS
from kdops.triton._common import acc_dtype, acc_scalar, layout_constants, program_id64, size64, tl_acc
from kdops.triton._reduce import sum_column
from kdops.triton.cwd_loss import NEAR_BOUND, expm1_gap_ratio, expm1_ratio, log1p_series

WARPS = 8
ROW_STATS, MAX_S, LOG_SUM_S, MAX_T, LOG_SUM_T, NEAR, SHIFT = layout_constants(CWD_STATS)
SUM, MEAN, WEIGHT = (tl.constexpr(LD_NORMALIZERS.index(name)) for name in ("sum", "mean", "weight"))


def _tiles(bins: int):
    """(rows, bins) per tile: 1024 values, 4 per thread of WARPS warps (a loop's live values stay in registers,
    also in float64)."""
    block_c = min(1024, triton.next_power_of_2(max(bins, 1)))
    return 1024 // block_c, block_c


@triton.jit
def _forward_kernel(s_ptr, t_ptr, w_ptr, stats_ptr, partial_ptr, rows, C, tau: tl.float64, inv_tau: tl.float64,
                    inv_n: tl.float64, HAS_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                    ACC: tl.constexpr):
    tau, inv_tau, inv_n, C = acc_scalar(tau, ACC), acc_scalar(inv_tau, ACC), acc_scalar(inv_n, ACC), size64(C)
    pid = program_id64(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    if HAS_W:
        w = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
    else:
        w = tl.where(r_ok, 1.0, 0.0).to(ACC)
    live = r_ok & (w != 0)  # rows past the end and rows of weight 0 read nothing (docs/math.md §0)
    cols = tl.arange(0, BLOCK_C)
    ms = tl.full([BLOCK_R], float("-inf"), ACC)
    mt = tl.full([BLOCK_R], float("-inf"), ACC)
    for start in range(0, C, BLOCK_C):
        c = start + cols
        ok = live[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        ms = tl.maximum(ms, tl.max(tl.load(s_ptr + offs, mask=ok, other=float("-inf")).to(ACC), axis=1))
        mt = tl.maximum(mt, tl.max(tl.load(t_ptr + offs, mask=ok, other=float("-inf")).to(ACC), axis=1))
    # Rows that are not read get harmless values, so no inf/NaN is ever formed (they are masked anyway).
    ms = tl.where(live, ms, 0.0)
    mt = tl.where(live, mt, 0.0)
    c0 = ((tl.load(s_ptr + r * C, mask=live, other=0.0).to(ACC) - ms)
          - (tl.load(t_ptr + r * C, mask=live, other=0.0).to(ACC) - mt))
    sum_s = tl.zeros([BLOCK_R], ACC)
    sum_t = tl.zeros([BLOCK_R], ACC)
    a = tl.zeros([BLOCK_R], ACC)
    m1 = tl.zeros([BLOCK_R], ACC)
    m2 = tl.zeros([BLOCK_R], ACC)
    zmax = tl.zeros([BLOCK_R], ACC)
    for start in range(0, C, BLOCK_C):
        c = start + cols
        ok = live[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        ds = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC) - ms[:, None]
        dt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC) - mt[:, None]
        et = tl.where(ok, tl.exp(dt * inv_tau), 0.0)
        z = tl.where(ok, (ds - dt) - c0[:, None], 0.0)
        sum_s += tl.sum(tl.where(ok, tl.exp(ds * inv_tau), 0.0), axis=1)
        sum_t += tl.sum(et, axis=1)
        a += tl.sum(tl.where(ok, et * (dt - ds), 0.0), axis=1)
        m1 += tl.sum(et * z, axis=1)
        m2 += tl.sum(et * z * z * expm1_gap_ratio(z * inv_tau), axis=1)
        zmax = tl.maximum(zmax, tl.max(tl.abs(z), axis=1))
    sum_s = tl.where(live, sum_s, 1.0)
    sum_t = tl.where(live, sum_t, 1.0)
    # near rows: T^2 KL = M2 - v^2 h(u) (no cancellation at large T); far rows: T^2 times the shifted KL
    big_m1 = m1 / sum_t
    big_m2 = m2 / sum_t
    v = big_m1 + big_m2 * inv_tau
    u = v * inv_tau
    near = zmax * inv_tau <= NEAR_BOUND
    far_kl = (a * inv_tau / sum_t + tl.log(sum_s) - tl.log(sum_t)) * tau * tau
    kl = tl.where(near, big_m2 - v * v * log1p_series(u, 2), far_kl)
    st = stats_ptr + r * ROW_STATS
    tl.store(st + MAX_S, ms, mask=r_ok)
    tl.store(st + LOG_SUM_S, tl.where(live, tl.log(sum_s), 0.0), mask=r_ok)
    tl.store(st + MAX_T, mt, mask=r_ok)
    tl.store(st + LOG_SUM_T, tl.where(live, tl.log(sum_t), 0.0), mask=r_ok)
    tl.store(st + NEAR, tl.where(live & near, 1.0, 0.0).to(ACC), mask=r_ok)
    tl.store(st + SHIFT, tl.where(live & near, v * log1p_series(u, 1), 0.0).to(ACC), mask=r_ok)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.where(live, w * (kl * inv_n), 0.0), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(w, axis=0))


@triton.jit
def _finish_kernel(partial_ptr, programs, rows: tl.float64, out_ptr, norm_ptr, NORMALIZE: tl.constexpr,
                   BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out = (sum of the weighted terms) / Z, Z = 1, rows or the sum of the weights (0 when Z = 0); norm = Z."""
    total = sum_column(partial_ptr, programs, 2, 0, BLOCK, ACC)
    if NORMALIZE == SUM:
        z = tl.full([], 1.0, ACC)
    elif NORMALIZE == MEAN:
        z = acc_scalar(rows, ACC)
    else:
        z = sum_column(partial_ptr, programs, 2, 1, BLOCK, ACC)
    tl.store(out_ptr, tl.where(z == 0, 0.0, total / tl.where(z == 0, 1.0, z)))
    tl.store(norm_ptr, z)


def forward(student, teacher, weight, temperature: float, normalize: str):
    s, t = student.contiguous(), teacher.contiguous()
    rows, bins = s.shape
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((rows, len(CWD_STATS)), dtype=acc, device=s.device)
    block_r, block_c = _tiles(bins)
    programs = max(1, triton.cdiv(rows, block_r))
    partial = torch.zeros((programs, 2), dtype=acc, device=s.device)
    if rows > 0:
        w = weight.contiguous() if weight is not None else s
        _forward_kernel[(programs,)](s, t, w, stats, partial, rows, bins, temperature, 1.0 / temperature, 1.0 / bins,
                                     HAS_W=weight is not None, BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc(acc),
                                     num_warps=WARPS)
    _finish_kernel[(1,)](partial, programs, float(rows), out, norm, NORMALIZE=LD_NORMALIZERS.index(normalize),
                         BLOCK=1024, ACC=tl_acc(acc))
    return out, norm, stats


@triton.jit
def _backward_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, w_ptr, stats_ptr, out_ptr, rows, C, tau: tl.float64,
                     inv_tau: tl.float64, inv_n: tl.float64, HAS_W: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    tau, inv_tau, inv_n, C = acc_scalar(tau, ACC), acc_scalar(inv_tau, ACC), acc_scalar(inv_n, ACC), size64(C)
    r = program_id64(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    z = tl.load(norm_ptr).to(ACC)
    coef = tl.where(z == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(z == 0, 1.0, z)) * inv_n
    if HAS_W:
        w = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
    else:
        w = tl.where(r_ok, 1.0, 0.0).to(ACC)
    live = r_ok & (w != 0)  # a row of weight 0 is not read: its gradient is exactly 0 (docs/math.md §0)
    st = stats_ptr + r * ROW_STATS
    max_s = tl.load(st + MAX_S, mask=live, other=0.0)
    max_t = tl.load(st + MAX_T, mask=live, other=0.0)
    c0 = ((tl.load(s_ptr + r * C, mask=live, other=0.0).to(ACC) - max_s)
          - (tl.load(t_ptr + r * C, mask=live, other=0.0).to(ACC) - max_t))[:, None]
    ms, mt = max_s[:, None], max_t[:, None]
    lss = tl.load(st + LOG_SUM_S, mask=live, other=0.0)[:, None]
    lst = tl.load(st + LOG_SUM_T, mask=live, other=0.0)[:, None]
    near = (tl.load(st + NEAR, mask=live, other=0.0) != 0)[:, None]
    shift = tl.load(st + SHIFT, mask=live, other=0.0)[:, None]
    row_coef = tl.where(live, coef * w, 0.0)[:, None]
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        in_row = (c < C)[None, :]
        ok = live[:, None] & in_row
        offs = r[:, None] * C + c[None, :]
        s = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
        t = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC)
        pt = tl.exp((t - mt) * inv_tau - lst)
        # near row: T (P_s - P_t) = P_t w E(w / T), w = z - shift; far row: T (P_s - P_t)
        wz = (((s - ms) - (t - mt)) - c0) - shift
        g = tl.where(near, pt * wz * expm1_ratio(wz * inv_tau), tau * (tl.exp((s - ms) * inv_tau - lss) - pt))
        g = tl.where(ok, row_coef * g, 0.0)
        tl.store(out_ptr + offs, g.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & in_row)


def backward(grad, student, teacher, weight, norm, row_stats, temperature: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    rows, bins = s.shape
    acc = acc_dtype(s.dtype)
    block_r, block_c = _tiles(bins)
    w = weight.contiguous() if weight is not None else s
    _backward_kernel[(triton.cdiv(rows, block_r),)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, w, row_stats.contiguous(), out, rows, bins,
        temperature, 1.0 / temperature, 1.0 / bins, HAS_W=weight is not None, BLOCK_R=block_r, BLOCK_C=block_c,
        ACC=tl_acc(acc), num_warps=WARPS)
    return out
