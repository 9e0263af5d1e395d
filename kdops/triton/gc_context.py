"""Triton kernels of the GcBlock context pooling (docs/math.md §4): same algorithm as csrc/cuda/gc_context.cu.

Forward, one pass over F with an online softmax: each program (image, pixel tile) computes its
logits, a tile max and exp-sum, and partial contexts sum_j exp(l_j - max) F[c, j]; one program per
image merges the tiles in order (rescaled to the image max), and the probabilities are written last.
Backward, one pass: ubar = g . context, so each tile computes u_j = g . F[:, j], dl_j = p_j (u_j - ubar),
its partial weight gradient and (if asked) dF; the partials are added in a fixed order.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, block_for, program_id64, size64, tl_acc
from kdops.triton._fgd import merged_max_and_sum, probs_kernel, sum_rows_kernel
from kdops.triton._reduce import kahan_add


@triton.jit
def _partial_kernel(f_ptr, w_ptr, b_ptr, logit_ptr, ctx_part_ptr, tile_max_ptr, tile_sum_ptr, C, HW, tiles,
                    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    j = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    j_ok = j < HW
    logits = tl.zeros([BLOCK_HW], ACC) + tl.load(b_ptr)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        f = tl.load(f_ptr + (n * C + c[:, None]) * HW + j[None, :], mask=c_ok[:, None] & j_ok[None, :],
                    other=0.0).to(ACC)
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0)
        logits += tl.sum(w[:, None] * f, axis=0)
    tl.store(logit_ptr + n * HW + j, logits, mask=j_ok)
    mx = tl.max(tl.where(j_ok, logits, float("-inf")), axis=0)
    e = tl.where(j_ok, tl.exp(logits - mx), 0.0)
    tl.store(tile_max_ptr + n * tiles + tile, mx)
    tl.store(tile_sum_ptr + n * tiles + tile, tl.sum(e, axis=0))
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        f = tl.load(f_ptr + (n * C + c[:, None]) * HW + j[None, :], mask=c_ok[:, None] & j_ok[None, :],
                    other=0.0).to(ACC)
        tl.store(ctx_part_ptr + (n * tiles + tile) * C + c, tl.sum(f * e[None, :], axis=1), mask=c_ok)


@triton.jit
def _merge_kernel(ctx_part_ptr, tile_max_ptr, tile_sum_ptr, ctx_ptr, stats_ptr, C, tiles, BLOCK_T: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    n = program_id64(0)
    mx, z = merged_max_and_sum(tile_max_ptr + n * tiles, tile_sum_ptr + n * tiles, 1, tiles, BLOCK_T, ACC)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ctx = tl.zeros([BLOCK_C], ACC)
        comp = tl.zeros([BLOCK_C], ACC)
        for k in range(0, tiles):
            scale = tl.exp(tl.load(tile_max_ptr + n * tiles + k) - mx)
            ctx, comp = kahan_add(ctx, comp, tl.load(ctx_part_ptr + (n * tiles + k) * C + c, mask=c < C, other=0.0)
                                  * scale)
        tl.store(ctx_ptr + n * C + c, (ctx - comp) / z, mask=c < C)
    tl.store(stats_ptr + 2 * n, mx)
    tl.store(stats_ptr + 2 * n + 1, z)


def forward(feat, weight, bias):
    f = feat.contiguous()
    n, c, h, w = f.shape
    hw = h * w
    acc = acc_dtype(f.dtype)
    context = torch.empty((n, c), dtype=acc, device=f.device)
    probs = torch.empty((n, h, w), dtype=acc, device=f.device)
    if n == 0:
        return context, probs
    block_hw, block_c = block_for(hw, 128), block_for(c, 32)
    tiles = triton.cdiv(hw, block_hw)
    ctx_part = torch.empty((n, tiles, c), dtype=acc, device=f.device)
    tile_max = torch.empty((n, tiles), dtype=acc, device=f.device)
    tile_sum = torch.empty_like(tile_max)
    stats = torch.empty((n, 2), dtype=acc, device=f.device)
    _partial_kernel[(tiles, n)](f, weight.contiguous(), bias.contiguous(), probs, ctx_part, tile_max, tile_sum, c, hw,
                                tiles, BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=tl_acc(acc))
    _merge_kernel[(n,)](ctx_part, tile_max, tile_sum, context, stats, c, tiles, BLOCK_T=block_for(tiles, 1024),
                        BLOCK_C=block_for(c, 1024), ACC=tl_acc(acc))
    block = block_for(hw, 1024)
    probs_kernel[(triton.cdiv(hw, block), n)](probs, stats, hw, BLOCK=block)
    return context, probs


@triton.jit
def _grad_kernel(g_ptr, f_ptr, w_ptr, ctx_ptr, p_ptr, df_ptr, dw_part_ptr, C, HW, tiles, NEED_FEAT: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    j = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    j_ok = j < HW
    ubar_acc = tl.zeros([BLOCK_C], ACC)
    u = tl.zeros([BLOCK_HW], ACC)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        g = tl.load(g_ptr + n * C + c, mask=c_ok, other=0.0)
        ubar_acc += g * tl.load(ctx_ptr + n * C + c, mask=c_ok, other=0.0)
        f = tl.load(f_ptr + (n * C + c[:, None]) * HW + j[None, :], mask=c_ok[:, None] & j_ok[None, :],
                    other=0.0).to(ACC)
        u += tl.sum(g[:, None] * f, axis=0)
    p = tl.load(p_ptr + n * HW + j, mask=j_ok, other=0.0)
    dl = p * (u - tl.sum(ubar_acc, axis=0))
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        both = c_ok[:, None] & j_ok[None, :]
        offsets = (n * C + c[:, None]) * HW + j[None, :]
        f = tl.load(f_ptr + offsets, mask=both, other=0.0).to(ACC)
        tl.store(dw_part_ptr + (n * tiles + tile) * C + c, tl.sum(f * dl[None, :], axis=1), mask=c_ok)
        if NEED_FEAT:
            g = tl.load(g_ptr + n * C + c, mask=c_ok, other=0.0)
            w = tl.load(w_ptr + c, mask=c_ok, other=0.0)
            df = p[None, :] * g[:, None] + w[:, None] * dl[None, :]
            tl.store(df_ptr + offsets, df.to(df_ptr.dtype.element_ty), mask=both)


def backward(grad_context, feat, weight, context, probs, need_feat: bool):
    f = feat.contiguous()
    n, c, h, w = f.shape
    hw = h * w
    acc = acc_dtype(f.dtype)
    grad_feat = torch.empty_like(f) if need_feat else f.new_empty(0)
    grad_weight = torch.zeros_like(weight)
    if f.numel() == 0:
        return grad_feat, grad_weight
    block_hw, block_c = block_for(hw, 128), block_for(c, 32)
    tiles = triton.cdiv(hw, block_hw)
    dw_part = torch.empty((n * tiles, c), dtype=acc, device=f.device)
    _grad_kernel[(tiles, n)](grad_context.to(acc).contiguous(), f, weight.contiguous(), context.contiguous(),
                             probs.contiguous(), grad_feat if need_feat else f, dw_part, c, hw, tiles,
                             NEED_FEAT=need_feat, BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=tl_acc(acc),
                             num_warps=8 if acc == torch.float64 else 4)  # float64 spills at 4 warps
    block = block_for(c, 256)
    sum_rows_kernel[(triton.cdiv(c, block),)](dw_part, grad_weight, n * tiles, c, BLOCK_C=block, ACC=tl_acc(acc))
    return grad_feat, grad_weight
