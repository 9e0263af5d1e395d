"""Triton kernels of channel-wise distillation (docs/math.md §6): csrc/include/kdops/math/cwd_loss.h.
Forward: one program per (n, c) row (one pass for the maxima, one for the shifted exp-sums) writes
the row statistics and KL; one program adds the KLs in row order. Backward: one elementwise pass.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, block_for, tl_acc
from kdops.triton._reduce import scaled_sum_kernel

ROW_STATS = 4  # (max_s, log sum_s, max_t, log sum_t)


@triton.jit
def _row_kernel(s_ptr, t_ptr, stats_ptr, kl_ptr, HW, inv_tau, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ms = tl.full([BLOCK], float("-inf"), ACC)
    mt = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, HW, BLOCK):
        j = start + offs
        ms = tl.maximum(ms, tl.load(s_ptr + row * HW + j, mask=j < HW, other=float("-inf")).to(ACC))
        mt = tl.maximum(mt, tl.load(t_ptr + row * HW + j, mask=j < HW, other=float("-inf")).to(ACC))
    max_s = tl.max(ms, axis=0)
    max_t = tl.max(mt, axis=0)
    sum_s = tl.zeros([BLOCK], ACC)
    sum_t = tl.zeros([BLOCK], ACC)
    a = tl.zeros([BLOCK], ACC)
    for start in range(0, HW, BLOCK):
        j = start + offs
        ok = j < HW
        ds = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - max_s
        dt = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC) - max_t
        et = tl.where(ok, tl.exp(dt * inv_tau), 0.0)
        sum_s += tl.where(ok, tl.exp(ds * inv_tau), 0.0)
        sum_t += et
        a += tl.where(ok, et * (dt - ds), 0.0)
    total_s = tl.sum(sum_s, axis=0)
    total_t = tl.sum(sum_t, axis=0)
    tl.store(stats_ptr + row * 4 + 0, max_s)
    tl.store(stats_ptr + row * 4 + 1, tl.log(total_s))
    tl.store(stats_ptr + row * 4 + 2, max_t)
    tl.store(stats_ptr + row * 4 + 3, tl.log(total_t))
    tl.store(kl_ptr + row, tl.sum(a, axis=0) * inv_tau / total_t + tl.log(total_s) - tl.log(total_t))


def forward(student, teacher, tau: float):
    s, t = student.contiguous(), teacher.contiguous()
    n, c, h, w = s.shape
    rows, hw = n * c, h * w
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((rows, ROW_STATS), dtype=acc, device=s.device)
    kl = torch.zeros(max(rows, 1), dtype=acc, device=s.device)
    if rows > 0:
        _row_kernel[(rows,)](s, t, stats, kl, hw, 1.0 / tau, BLOCK=block_for(hw, 2048), ACC=tl_acc(acc))
    scaled_sum_kernel[(1,)](kl, rows, 1, 0, tau * tau / max(rows, 1), out, BLOCK=1024, ACC=tl_acc(acc))
    return out, stats


@triton.jit
def _grad_kernel(grad_ptr, s_ptr, t_ptr, stats_ptr, out_ptr, HW, inv_tau, scale, BLOCK: tl.constexpr,
                 ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    coef = tl.load(grad_ptr).to(ACC) * scale
    s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    ps = tl.exp((s - tl.load(stats_ptr + row * 4 + 0)) * inv_tau - tl.load(stats_ptr + row * 4 + 1))
    pt = tl.exp((t - tl.load(stats_ptr + row * 4 + 2)) * inv_tau - tl.load(stats_ptr + row * 4 + 3))
    tl.store(out_ptr + row * HW + j, (coef * (ps - pt)).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, row_stats, tau: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    block = block_for(hw, 1024)
    _grad_kernel[(n * c, triton.cdiv(hw, block))](grad.to(acc).reshape(1), s, t, row_stats.contiguous(), out, hw,
                                                   1.0 / tau, tau / (n * c), BLOCK=block, ACC=tl_acc(acc))
    return out
