"""Triton kernels of quality-focal KD (docs/math.md §12): the per-element math of
csrc/include/kdops/math/quality_focal_kd.h. Forward: each program takes BLOCK_R rows of C classes and writes one
(weighted sum, sum of weights) partial; one program adds the partials in order and divides by Z. Backward: the
same tiles, dS written.
"""

import torch
import triton
import triton.language as tl

from kdops import _checks
from kdops.reference.quality_focal_kd import NORMALIZERS
from kdops.triton._common import acc_dtype, acc_scalar, program_id64, size64, tl_acc, weighted
from kdops.triton._reduce import sum_column

WARPS = 8
# |d|^beta as in the C++ header (qfkd::Beta): beta = 1, beta = 2, pow
BETA_ONE, BETA_TWO, BETA_ANY = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


def _beta_kind(beta: float) -> int:
    return BETA_ONE if beta == 1.0 else BETA_TWO if beta == 2.0 else BETA_ANY


def _tiles(classes: int):
    """(rows, classes) per tile: 512 values, 2 per thread of WARPS warps, a whole row for up to 256 classes (at 1024
    values ptxas spilled the general-beta forward on sm_90)."""
    block_c = min(256, triton.next_power_of_2(max(classes, 1)))
    return 512 // block_c, block_c


@triton.jit
def _terms(zs, zt):
    """(bce, d, s (1 - s)) of each element."""
    e = tl.exp(-tl.abs(zs))
    r = 1.0 / (1.0 + e)
    s = tl.where(zs < 0, e * r, r)
    ep = tl.exp(-tl.abs(zt))
    rp = 1.0 / (1.0 + ep)
    p = tl.where(zt < 0, ep * rp, rp)
    bce = tl.maximum(zs, 0.0) - p * zs + tl.log(1.0 + e)
    return bce, s - p, e * r * r


@triton.jit
def _pow(a, beta):
    """a^beta for a > 0 (exp2 and log2: the interpreter has no libdevice pow)."""
    return tl.exp2(beta * tl.log2(a))


@triton.jit
def _loss(zs, zt, beta, BETA_KIND: tl.constexpr):
    bce, d, _ = _terms(zs, zt)
    a = tl.abs(d)
    if BETA_KIND == BETA_ONE:
        f = bce * a
    elif BETA_KIND == BETA_TWO:
        f = bce * (a * a)
    else:  # 0^beta: 1 for beta = 0, else 0
        f = bce * tl.where(a == 0, tl.where(beta == 0, 1.0, 0.0), _pow(tl.where(a == 0, 1.0, a), beta))
    return f


@triton.jit
def _grad(zs, zt, beta, BETA_KIND: tl.constexpr):
    bce, d, slope = _terms(zs, zt)
    a = tl.abs(d)
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    if BETA_KIND == BETA_ONE:
        g = d * a + bce * slope * sign
    elif BETA_KIND == BETA_TWO:
        g = d * (a * a) + 2.0 * bce * slope * d
    else:
        g = sign * _pow(tl.where(a == 0, 1.0, a), beta - 1.0) * (a * a + beta * bce * slope)
    return g


@triton.jit
def _forward_kernel(s_ptr, t_ptr, w_ptr, partial_ptr, rows, C, beta: tl.float64, HAS_W: tl.constexpr,
                    BETA_KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    beta, C = acc_scalar(beta, ACC), size64(C)
    pid = program_id64(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    per_row = tl.zeros([BLOCK_R], ACC)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = r_ok[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        zs = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
        zt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC)
        per_row += tl.sum(tl.where(ok, _loss(zs, zt, beta, BETA_KIND), 0.0), axis=1)
    weights = tl.zeros([BLOCK_R], ACC)
    if HAS_W:
        weights = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
        per_row = weighted(weights, per_row)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.where(r_ok, per_row, 0.0), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(weights, axis=0))


@triton.jit
def _finish_kernel(partial_ptr, programs, fixed_norm: tl.float64, out_ptr, norm_ptr, NORM_IS_WEIGHT: tl.constexpr,
                   BLOCK: tl.constexpr, ACC: tl.constexpr):
    """loss = sum / Z, Z = the sum of the weights (column 1) or fixed_norm (1 or rows); 0 when Z = 0."""
    total = sum_column(partial_ptr, programs, 2, 0, BLOCK, ACC)
    if NORM_IS_WEIGHT:
        z = sum_column(partial_ptr, programs, 2, 1, BLOCK, ACC)
    else:
        z = acc_scalar(fixed_norm, ACC)
    tl.store(out_ptr, tl.where(z == 0, 0.0, total / tl.where(z == 0, 1.0, z)))
    tl.store(norm_ptr, z)


def forward(student, teacher, weight, beta: float, normalize: str):
    _checks.choice(normalize, NORMALIZERS, "quality_focal_kd", "normalize")  # a raw call skips the public checks
    s, t = student.contiguous(), teacher.contiguous()
    rows, classes = s.shape
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    block_r, block_c = _tiles(classes)
    programs = max(1, triton.cdiv(rows, block_r))
    partial = torch.zeros((programs, 2), dtype=acc, device=s.device)
    if rows > 0:
        w = weight.contiguous() if weight is not None else s
        _forward_kernel[(programs,)](s, t, w, partial, rows, classes, beta, HAS_W=weight is not None,
                                     BETA_KIND=_beta_kind(beta), BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc(acc),
                                     num_warps=WARPS)
    by_weight = normalize == "weight" and weight is not None
    fixed = 1.0 if normalize == "sum" else float(rows)
    _finish_kernel[(1,)](partial, programs, fixed, out, norm, NORM_IS_WEIGHT=by_weight, BLOCK=1024, ACC=tl_acc(acc))
    return out, norm


@triton.jit
def _backward_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, w_ptr, out_ptr, rows, C, beta: tl.float64,
                     HAS_W: tl.constexpr, BETA_KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr):
    beta, C = acc_scalar(beta, ACC), size64(C)
    r = program_id64(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    z = tl.load(norm_ptr).to(ACC)
    coef = tl.where(z == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(z == 0, 1.0, z))
    if HAS_W:
        w = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
    else:
        w = tl.full([BLOCK_R], 1.0, ACC)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = r_ok[:, None] & (c < C)[None, :]
        offs = r[:, None] * C + c[None, :]
        zs = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC)
        zt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC)
        g = weighted(w[:, None], coef * _grad(zs, zt, beta, BETA_KIND))
        tl.store(out_ptr + offs, g.to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, weight, norm, beta: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    rows, classes = s.shape
    acc = acc_dtype(s.dtype)
    block_r, block_c = _tiles(classes)
    w = weight.contiguous() if weight is not None else s
    _backward_kernel[(triton.cdiv(rows, block_r),)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, w, out, rows, classes, beta,
        HAS_W=weight is not None, BETA_KIND=_beta_kind(beta), BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc(acc),
        num_warps=WARPS)
    return out
