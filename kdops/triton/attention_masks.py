"""Triton kernels of the FGD attention masks (docs/math.md §1): same algorithm as csrc/cuda/attention_masks.cu.

Forward reads feat once: each program owns one image and a tile of pixels, walks the channels in
blocks, keeps the per-pixel sums in registers and writes per-channel partial sums per tile; the
partials are added in a fixed order, then both softmaxes run as row kernels.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import (acc_dtype, acc_scalar, block_for, program_id64, row_tile, scaled_softmax_grad_row,
                                    scaled_softmax_row, size64, tl_acc)
from kdops.triton._reduce import kahan_add


@triton.jit
def _stats_kernel(f_ptr, m_ptr, k_part_ptr, C, HW, tiles, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                  ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_ok = hw < HW
    m = tl.zeros([BLOCK_HW], ACC)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        ptrs = f_ptr + (n * C + c[:, None]) * HW + hw[None, :]
        v = tl.abs(tl.load(ptrs, mask=c_ok[:, None] & hw_ok[None, :], other=0.0).to(ACC))
        m += tl.sum(v, axis=0)
        tl.store(k_part_ptr + (n * tiles + tile) * C + c, tl.sum(v, axis=1), mask=c_ok)
    tl.store(m_ptr + n * HW + hw, m, mask=hw_ok)


@triton.jit
def _channel_kernel(k_part_ptr, k_ptr, out_ptr, C, tiles, scale: tl.float64, BLOCK_C: tl.constexpr,
                    ACC: tl.constexpr):
    n = program_id64(0)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        k = tl.zeros([BLOCK_C], ACC)
        comp = tl.zeros([BLOCK_C], ACC)
        for t in range(0, tiles):
            k, comp = kahan_add(k, comp, tl.load(k_part_ptr + (n * tiles + t) * C + c, mask=c < C, other=0.0))
        tl.store(k_ptr + n * C + c, k - comp, mask=c < C)
    tl.debug_barrier()  # the softmax below reads what other threads of this program just stored
    scaled_softmax_row(k_ptr + n * C, out_ptr + n * C, C, acc_scalar(scale, ACC), BLOCK_C, ACC)


@triton.jit
def _spatial_kernel(m_ptr, out_ptr, HW, scale: tl.float64, BLOCK: tl.constexpr, ACC: tl.constexpr):
    n = program_id64(0)
    scaled_softmax_row(m_ptr + n * HW, out_ptr + n * HW, HW, acc_scalar(scale, ACC), BLOCK, ACC)


def forward(feat: torch.Tensor, temperature: float):
    feat = feat.contiguous()
    n, c, h, w = feat.shape
    hw = h * w
    acc = acc_dtype(feat.dtype)
    spatial = torch.empty((n, h, w), dtype=acc, device=feat.device)
    channel = torch.empty((n, c), dtype=acc, device=feat.device)
    if n == 0:
        return spatial, channel
    block_hw = block_for(hw, 128)
    block_c = block_for(c, 32)
    tiles = triton.cdiv(hw, block_hw)
    m_sum = torch.empty((n, hw), dtype=acc, device=feat.device)
    k_part = torch.empty((n, tiles, c), dtype=acc, device=feat.device)
    k_sum = torch.empty((n, c), dtype=acc, device=feat.device)
    _stats_kernel[(tiles, n)](feat, m_sum, k_part, c, hw, tiles, BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=tl_acc(acc))
    _channel_kernel[(n,)](k_part, k_sum, channel, c, tiles, 1.0 / (hw * temperature), BLOCK_C=block_for(c, 1024),
                          ACC=tl_acc(acc))
    _spatial_kernel[(n,)](m_sum, spatial, hw, 1.0 / (c * temperature), BLOCK=block_for(hw, 1024), ACC=tl_acc(acc))
    return spatial, channel


@triton.jit
def _softmax_grad_kernel(a_ptr, g_ptr, out_ptr, length, inv_temp: tl.float64, post_scale: tl.float64,
                         BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_id64(0)
    scaled_softmax_grad_row(a_ptr + row * length, g_ptr + row * length, out_ptr + row * length, length,
                            acc_scalar(inv_temp, ACC), acc_scalar(post_scale, ACC), BLOCK, ACC)


@triton.jit
def _feature_grad_kernel(f_ptr, gm_ptr, gk_ptr, out_ptr, C, HW, tiles, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row, tile = row_tile(tiles)  # row = n * C + c
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    f = tl.load(f_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    gm = tl.load(gm_ptr + (row // C) * HW + j, mask=ok, other=0.0)
    gk = tl.load(gk_ptr + row)
    sign = tl.where(f > 0, 1.0, tl.where(f < 0, -1.0, 0.0)).to(ACC)
    tl.store(out_ptr + row * HW + j, (sign * (gm + gk)).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad_spatial, grad_channel, feat, spatial, channel, temperature: float):
    feat = feat.contiguous()
    n, c, h, w = feat.shape
    hw = h * w
    grad = torch.empty_like(feat)
    if feat.numel() == 0:
        return grad
    acc = acc_dtype(feat.dtype)
    sp, g_sp = spatial.to(acc).contiguous(), grad_spatial.to(acc).contiguous()
    ch, g_ch = channel.to(acc).contiguous(), grad_channel.to(acc).contiguous()
    gm, gk = torch.empty_like(sp), torch.empty_like(ch)
    inv_temp = 1.0 / temperature
    _softmax_grad_kernel[(n,)](sp, g_sp, gm, hw, inv_temp, 1.0 / c, BLOCK=block_for(hw, 1024), ACC=tl_acc(acc))
    _softmax_grad_kernel[(n,)](ch, g_ch, gk, c, inv_temp, 1.0 / hw, BLOCK=block_for(c, 1024), ACC=tl_acc(acc))
    block = block_for(hw, 1024)
    tiles = triton.cdiv(hw, block)
    _feature_grad_kernel[(n * c * tiles,)](feat, gm, gk, grad, c, hw, tiles, BLOCK=block, ACC=tl_acc(acc))
    return grad
