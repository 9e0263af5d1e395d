"""Triton kernels of the class-weighted soft cross-entropy (docs/math.md §7): the algorithm of
csrc/include/kdops/math/soft_cross_entropy.h (same row statistics).

Forward: each program takes BLOCK_R rows, makes one pass over the classes for the row maxima and
one for the shifted exp-sums, writes the rows' statistics and one (loss sum, kept rows) partial;
a single program adds the partials in order. Backward: one pass from the saved statistics.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import SOFT_CE_STATS
from kdops.triton._common import acc_dtype, acc_scalar, layout_constants, program_id64, size64, tl_acc
from kdops.triton._reduce import mean_kernel

WARPS = 8

ROW_STATS, MAX_S, LOG_SUM_S, MAX_T, LOG_SUM_T, LOG_SUM_1, WEIGHT = layout_constants(SOFT_CE_STATS)


def _tiles(classes: int):
    """(rows, classes) per tile: 1024 values, 4 per thread of WARPS warps, so that a loop's live values (s, t, their
    exps, the weights, the rows' statistics) stay in registers, also in float64."""
    block_c = min(1024, triton.next_power_of_2(max(classes, 1)))
    return 1024 // block_c, block_c


@triton.jit
def _forward_kernel(s_ptr, t_ptr, w_ptr, y_ptr, stats_ptr, partial_ptr, rows, C, inv_t: tl.float64, mu: tl.float64,
                    ignore_index, HAS_W: tl.constexpr, HAS_TARGET: tl.constexpr, SEPARATE_SUM1: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    inv_t, mu, C = acc_scalar(inv_t, ACC), acc_scalar(mu, ACC), size64(C)
    pid = program_id64(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    cols = tl.arange(0, BLOCK_C)
    ms = tl.full([BLOCK_R], float("-inf"), ACC)
    mt = tl.full([BLOCK_R], float("-inf"), ACC)
    for start in range(0, C, BLOCK_C):
        c = start + cols
        ok = r_ok[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        ms = tl.maximum(ms, tl.max(tl.load(s_ptr + offs, mask=ok, other=float("-inf")).to(ACC), axis=1))
        mt = tl.maximum(mt, tl.max(tl.load(t_ptr + offs, mask=ok, other=float("-inf")).to(ACC), axis=1))
    # Rows past the end get harmless values, so no inf/NaN is ever formed (they are masked anyway).
    ms = tl.where(r_ok, ms, 0.0)
    mt = tl.where(r_ok, mt, 0.0)
    sum_s = tl.zeros([BLOCK_R], ACC)
    sum_t = tl.zeros([BLOCK_R], ACC)
    sum_1 = tl.zeros([BLOCK_R], ACC)
    a = tl.zeros([BLOCK_R], ACC)
    b = tl.zeros([BLOCK_R], ACC)
    for start in range(0, C, BLOCK_C):
        c = start + cols
        ok = r_ok[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        ds = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC) - ms[:, None]
        et = tl.where(ok, tl.exp((tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC) - mt[:, None]) * inv_t), 0.0)
        if HAS_W:
            w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(ACC)[None, :]
        else:
            w = 1.0
        sum_s += tl.sum(tl.where(ok, tl.exp(ds * inv_t), 0.0), axis=1)
        sum_t += tl.sum(et, axis=1)
        a += tl.sum(w * et, axis=1)
        b += tl.sum(tl.where(ok, w * et * ds, 0.0), axis=1)
        if SEPARATE_SUM1:
            sum_1 += tl.sum(tl.where(ok, tl.exp(ds), 0.0), axis=1)
    if not SEPARATE_SUM1:
        sum_1 = sum_s
    sum_s = tl.where(r_ok, sum_s, 1.0)
    sum_t = tl.where(r_ok, sum_t, 1.0)
    sum_1 = tl.where(r_ok, sum_1, 1.0)
    weight = a / sum_t
    loss = weight * tl.log(sum_s) - b * inv_t / sum_t
    keep = r_ok
    if HAS_TARGET:
        label = tl.load(y_ptr + r, mask=r_ok, other=ignore_index)
        keep = r_ok & (label != ignore_index)
        label_ok = (label >= 0) & (label < C)
        zy = tl.load(s_ptr + r * C + label, mask=keep & label_ok, other=0.0).to(ACC) - ms
        hard = tl.log(sum_1) - zy
        loss = tl.where(label_ok, mu * hard + (1.0 - mu) * loss, float("nan"))
    st = stats_ptr + r * ROW_STATS
    tl.store(st + MAX_S, ms, mask=r_ok)
    tl.store(st + LOG_SUM_S, tl.log(sum_s), mask=r_ok)
    tl.store(st + MAX_T, mt, mask=r_ok)
    tl.store(st + LOG_SUM_T, tl.log(sum_t), mask=r_ok)
    tl.store(st + LOG_SUM_1, tl.log(sum_1), mask=r_ok)
    tl.store(st + WEIGHT, weight, mask=r_ok)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.where(keep, loss, 0.0), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(keep.to(ACC), axis=0))


def forward(student, teacher, class_weight, target, temperature: float, mu: float, ignore_index: int):
    s, t = student.contiguous(), teacher.contiguous()
    rows, classes = s.shape
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    stats = torch.empty((rows, len(SOFT_CE_STATS)), dtype=acc, device=s.device)
    block_r, block_c = _tiles(classes)
    programs = max(1, triton.cdiv(rows, block_r))
    partial = torch.zeros((programs, 2), dtype=acc, device=s.device)
    if rows > 0:
        w = class_weight.contiguous() if class_weight is not None else s
        y = target.contiguous() if target is not None else s
        _forward_kernel[(programs,)](s, t, w, y, stats, partial, rows, classes, 1.0 / temperature, mu, ignore_index,
                                     HAS_W=class_weight is not None, HAS_TARGET=target is not None,
                                     SEPARATE_SUM1=target is not None and temperature != 1.0,
                                     BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc(acc), num_warps=WARPS)
    mean_kernel[(1,)](partial, programs, out, norm, BLOCK=1024, ACC=tl_acc(acc))
    return out, norm, stats


@triton.jit
def _backward_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, w_ptr, y_ptr, stats_ptr, out_ptr, rows, C, inv_t: tl.float64,
                     mu: tl.float64, ignore_index, HAS_W: tl.constexpr, HAS_TARGET: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    inv_t, mu, C = acc_scalar(inv_t, ACC), acc_scalar(mu, ACC), size64(C)
    r = program_id64(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    n = tl.load(norm_ptr).to(ACC)
    coef = tl.where(n == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(n == 0, 1.0, n))
    st = stats_ptr + r * ROW_STATS
    ms = tl.load(st + MAX_S, mask=r_ok, other=0.0)[:, None]
    lss = tl.load(st + LOG_SUM_S, mask=r_ok, other=0.0)[:, None]
    mt = tl.load(st + MAX_T, mask=r_ok, other=0.0)[:, None]
    lst = tl.load(st + LOG_SUM_T, mask=r_ok, other=0.0)[:, None]
    ls1 = tl.load(st + LOG_SUM_1, mask=r_ok, other=0.0)[:, None]
    weight = tl.load(st + WEIGHT, mask=r_ok, other=0.0)[:, None]
    if HAS_TARGET:
        label = tl.load(y_ptr + r, mask=r_ok, other=ignore_index)
        keep = (label != ignore_index)[:, None]
        bad = ((label < 0) | (label >= C))[:, None]
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = r_ok[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        zs = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
        zt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC)
        if HAS_W:
            w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(ACC)[None, :]
        else:
            w = 1.0
        ps = tl.exp((zs - ms) * inv_t - lss)
        pt = tl.exp((zt - mt) * inv_t - lst)
        g = inv_t * (ps * weight - w * pt)
        if HAS_TARGET:
            p1 = tl.exp(zs - ms - ls1)
            onehot = tl.where(c[None, :] == label[:, None], 1.0, 0.0)
            g = (1.0 - mu) * g + mu * (p1 - onehot)
            g = tl.where(keep, tl.where(bad, float("nan"), g), 0.0)
        tl.store(out_ptr + offs, (coef * g).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, class_weight, target, norm, row_stats, temperature: float, mu: float,
             ignore_index: int):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    rows, classes = s.shape
    acc = acc_dtype(s.dtype)
    block_r, block_c = _tiles(classes)
    w = class_weight.contiguous() if class_weight is not None else s
    y = target.contiguous() if target is not None else s
    _backward_kernel[(triton.cdiv(rows, block_r),)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, w, y, row_stats.contiguous(), out, rows, classes,
        1.0 / temperature, mu, ignore_index, HAS_W=class_weight is not None, HAS_TARGET=target is not None,
        BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc(acc), num_warps=WARPS)
    return out
