"""Triton kernels of the binary weighted soft cross-entropy (docs/math.md §7): the per-anchor math of
csrc/include/kdops/math/soft_binary_cross_entropy.h. Forward: each program sums BLOCK anchors into one
(loss, kept) partial; one program adds the partials in order. Backward: one elementwise pass.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, acc_scalar, program_id64, tl_acc
from kdops.triton._reduce import mean_kernel

BLOCK = 1024


@triton.jit
def _log_sigmoid(x):
    # min(x, 0) - log(1 + exp(-|x|)): finite for every finite x
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    return tl.where(x < 0, e * r, r)


@triton.jit
def _load(s_ptr, t_ptr, y_ptr, idx, n, ignore_index, HAS_TARGET: tl.constexpr, ACC: tl.constexpr):
    ok = idx < n
    zs = tl.load(s_ptr + idx, mask=ok, other=0.0).to(ACC)
    zt = tl.load(t_ptr + idx, mask=ok, other=0.0).to(ACC)
    if HAS_TARGET:
        label = tl.load(y_ptr + idx, mask=ok, other=ignore_index)
    else:
        label = tl.zeros_like(idx)
    return ok, zs, zt, label


@triton.jit
def _forward_kernel(s_ptr, t_ptr, y_ptr, partial_ptr, n, wp: tl.float64, wn: tl.float64, inv_t: tl.float64,
                    mu: tl.float64, ignore_index, HAS_TARGET: tl.constexpr, UNIT_T: tl.constexpr, BLOCK: tl.constexpr,
                    ACC: tl.constexpr):
    wp, wn, inv_t, mu = acc_scalar(wp, ACC), acc_scalar(wn, ACC), acc_scalar(inv_t, ACC), acc_scalar(mu, ACC)
    pid = program_id64(0)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    ok, zs, zt, label = _load(s_ptr, t_ptr, y_ptr, idx, n, ignore_index, HAS_TARGET, ACC)
    x = zs * inv_t
    pt = _sigmoid(zt * inv_t)
    ls = _log_sigmoid(x)
    loss = -(wp * pt * ls + wn * (1.0 - pt) * (ls - x))
    keep = ok
    if HAS_TARGET:
        keep = ok & (label != ignore_index)
        y = label.to(ACC)
        if UNIT_T:
            l1 = ls
        else:
            l1 = _log_sigmoid(zs)
        hard = -(y * l1 + (1.0 - y) * (l1 - zs))
        loss = tl.where((label == 0) | (label == 1), mu * hard + (1.0 - mu) * loss, float("nan"))
    tl.store(partial_ptr + pid * 2, tl.sum(tl.where(keep, loss, 0.0), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(keep.to(ACC), axis=0))


def forward(student, teacher, target, pos_weight: float, neg_weight: float, temperature: float, mu: float,
            ignore_index: int):
    s, t = student.contiguous(), teacher.contiguous()
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    n = s.numel()
    programs = max(1, triton.cdiv(n, BLOCK))
    partial = torch.zeros((programs, 2), dtype=acc, device=s.device)
    if n > 0:
        y = target.contiguous() if target is not None else s
        _forward_kernel[(programs,)](s, t, y, partial, n, pos_weight, neg_weight, 1.0 / temperature, mu, ignore_index,
                                     HAS_TARGET=target is not None, UNIT_T=temperature == 1.0, BLOCK=BLOCK,
                                     ACC=tl_acc(acc))
    mean_kernel[(1,)](partial, programs, out, norm, BLOCK=1024, ACC=tl_acc(acc))
    return out, norm


@triton.jit
def _backward_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, y_ptr, out_ptr, n, wp: tl.float64, wn: tl.float64,
                     inv_t: tl.float64, mu: tl.float64, ignore_index, HAS_TARGET: tl.constexpr, UNIT_T: tl.constexpr,
                     BLOCK: tl.constexpr, ACC: tl.constexpr):
    wp, wn, inv_t, mu = acc_scalar(wp, ACC), acc_scalar(wn, ACC), acc_scalar(inv_t, ACC), acc_scalar(mu, ACC)
    idx = program_id64(0) * BLOCK + tl.arange(0, BLOCK)
    ok, zs, zt, label = _load(s_ptr, t_ptr, y_ptr, idx, n, ignore_index, HAS_TARGET, ACC)
    count = tl.load(norm_ptr).to(ACC)
    coef = tl.where(count == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(count == 0, 1.0, count))
    s = _sigmoid(zs * inv_t)
    pt = _sigmoid(zt * inv_t)
    g = inv_t * (wn * (1.0 - pt) * s - wp * pt * (1.0 - s))
    if HAS_TARGET:
        if UNIT_T:
            s1 = s
        else:
            s1 = _sigmoid(zs)
        g = (1.0 - mu) * g + mu * (s1 - label.to(ACC))
        g = tl.where((label == 0) | (label == 1), g, float("nan"))
        g = tl.where(label == ignore_index, 0.0, g)
    tl.store(out_ptr + idx, (coef * g).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, target, norm, pos_weight: float, neg_weight: float, temperature: float,
             mu: float, ignore_index: int):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    n = s.numel()
    if n == 0:
        return out
    acc = acc_dtype(s.dtype)
    y = target.contiguous() if target is not None else s
    _backward_kernel[(triton.cdiv(n, BLOCK),)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, y, out, n, pos_weight, neg_weight, 1.0 / temperature,
        mu, ignore_index, HAS_TARGET=target is not None, UNIT_T=temperature == 1.0, BLOCK=BLOCK, ACC=tl_acc(acc))
    return out
