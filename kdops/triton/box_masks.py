"""Triton kernels of the FGD box masks (docs/math.md §2): same algorithm as csrc/cuda/box_masks.cu.

Each program owns one image and a tile of pixels and walks the boxes in blocks: a [pixels, boxes]
coverage tile, then the max over boxes (order-free, so exact and deterministic). Boxes of other
images, invalid boxes (not finite, x2 < x1, y2 < y1) and boxes outside the map cover nothing. Per-tile
counts of background pixels are added in a fixed order by the background kernel.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, block_for, program_id64, size64, tl_acc


@triton.jit
def _reciprocal(x, ACC: tl.constexpr):
    """1 / x rounded to nearest, bit-equal to the other backends: compiled fp32 `/` is approximate."""
    if ACC == tl.float32:
        return tl.div_rn(tl.full(x.shape, 1.0, ACC), x)
    else:
        return 1.0 / x


@triton.jit
def _fg_kernel(boxes_ptr, index_ptr, fg_ptr, zeros_ptr, K, H, W, HW, tiles, BLOCK_P: tl.constexpr,
               BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = p < HW  # H * W from the host: H * W in the kernel would be int32 and wrap at 2^31 pixels
    py = (p // W).to(ACC)
    px = (p % W).to(ACC)
    last_w = W * 1.0 - 1.0  # W, H may arrive as compile-time ints (Triton specialises 1)
    last_h = H * 1.0 - 1.0
    best = tl.zeros([BLOCK_P], ACC)
    for k0 in range(0, size64(K), BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x1 = tl.load(boxes_ptr + 4 * k, mask=k_ok, other=0.0).to(ACC)
        y1 = tl.load(boxes_ptr + 4 * k + 1, mask=k_ok, other=0.0).to(ACC)
        x2 = tl.load(boxes_ptr + 4 * k + 2, mask=k_ok, other=0.0).to(ACC)
        y2 = tl.load(boxes_ptr + 4 * k + 3, mask=k_ok, other=0.0).to(ACC)
        image = tl.load(index_ptr + k, mask=k_ok, other=-1)
        # |x| < inf is false for NaN and +-inf.
        finite = (tl.abs(x1) < float("inf")) & (tl.abs(y1) < float("inf")) & (tl.abs(x2) < float("inf")) & \
            (tl.abs(y2) < float("inf"))
        wmin, wmax = tl.floor(x1), tl.ceil(x2)
        hmin, hmax = tl.floor(y1), tl.ceil(y2)
        valid = k_ok & (image == n) & finite & (x2 >= x1) & (y2 >= y1)
        valid = valid & (wmax >= 0.0) & (hmax >= 0.0) & (wmin <= last_w) & (hmin <= last_h)
        # The whole box's size, before clipping (FGD eq. 2).
        size = tl.where(valid, (hmax - hmin + 1.0) * (wmax - wmin + 1.0), 1.0)
        value = _reciprocal(size, ACC)
        wmin, hmin = tl.maximum(wmin, 0.0), tl.maximum(hmin, 0.0)
        wmax, hmax = tl.minimum(wmax, last_w), tl.minimum(hmax, last_h)
        cover = valid[None, :] & (px[:, None] >= wmin[None, :]) & (px[:, None] <= wmax[None, :]) & \
            (py[:, None] >= hmin[None, :]) & (py[:, None] <= hmax[None, :])
        best = tl.maximum(best, tl.max(tl.where(cover, value[None, :], 0.0), axis=1))
    tl.store(fg_ptr + n * HW + p, best, mask=ok)
    tl.store(zeros_ptr + n * tiles + tile, tl.sum((ok & (best == 0.0)).to(tl.int32), axis=0))


@triton.jit
def _bg_kernel(fg_ptr, zeros_ptr, bg_ptr, HW, tiles, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
               ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    count = tl.zeros([BLOCK_T], tl.int64)  # an image's background pixels can pass 2^31 - 1
    for t0 in range(0, size64(tiles), BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        count += tl.load(zeros_ptr + n * tiles + t, mask=t < tiles, other=0).to(tl.int64)
    total = tl.sum(count, axis=0).to(ACC)
    inv = tl.where(total == 0.0, 0.0, _reciprocal(tl.where(total == 0.0, 1.0, total), ACC))
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = p < HW
    fg = tl.load(fg_ptr + n * HW + p, mask=ok, other=1.0)
    tl.store(bg_ptr + n * HW + p, tl.where(fg == 0.0, inv, 0.0), mask=ok)


def forward(boxes: torch.Tensor, image_index: torch.Tensor, batch: int, height: int, width: int):
    boxes, image_index = boxes.contiguous(), image_index.contiguous()
    acc = acc_dtype(boxes.dtype)
    fg = torch.empty((batch, height, width), dtype=acc, device=boxes.device)
    bg = torch.empty_like(fg)
    if batch == 0:
        return fg, bg
    hw = height * width
    block_p = block_for(hw, 128)
    tiles = triton.cdiv(hw, block_p)
    zeros = torch.empty((batch, tiles), dtype=torch.int32, device=boxes.device)
    k = boxes.shape[0]
    _fg_kernel[(tiles, batch)](boxes, image_index, fg, zeros, k, height, width, hw, tiles, BLOCK_P=block_p,
                               BLOCK_K=block_for(k, 32), ACC=tl_acc(acc))
    _bg_kernel[(tiles, batch)](fg, zeros, bg, hw, tiles, BLOCK_P=block_p, BLOCK_T=block_for(tiles, 1024),
                               ACC=tl_acc(acc))
    return fg, bg
