"""FGD box masks, docs/math.md §2: M_fg = max over covering boxes of 1 / (the box's whole size),
M_bg = [M_fg == 0] / count.

Vectorised over boxes (no Python loop): each box's coverage is the outer product of its row and
column ranges, and the per-image max is a scatter_reduce over the boxes' image indices.
"""

import torch

from kdops._layout import acc_dtype


def box_spans(boxes: torch.Tensor, image_index: torch.Tensor, batch: int, height: int, width: int):
    """Per box: (wmin, hmin, wmax, hmax) clipped to the map and the value 1 / (the unclipped box's size),
    zero where the box writes nothing (not finite, x2 < x1, y2 < y1, no image in [0, batch), entirely
    outside the map)."""
    b = boxes.to(acc_dtype(boxes.dtype))
    valid = torch.isfinite(b).all(dim=1) & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
    valid &= (image_index >= 0) & (image_index < batch)
    b = torch.where(valid[:, None], b, torch.zeros_like(b))  # keep NaN/inf out of floor/ceil
    wmin, hmin = torch.floor(b[:, 0]), torch.floor(b[:, 1])
    wmax, hmax = torch.ceil(b[:, 2]), torch.ceil(b[:, 3])
    valid &= (wmax >= 0) & (hmax >= 0) & (wmin <= width - 1) & (hmin <= height - 1)
    value = 1.0 / ((hmax - hmin + 1) * (wmax - wmin + 1))  # FGD eq. 2: the whole box, before clipping
    wmin, hmin = wmin.clamp(min=0), hmin.clamp(min=0)
    wmax, hmax = wmax.clamp(max=width - 1), hmax.clamp(max=height - 1)
    return wmin, hmin, wmax, hmax, torch.where(valid, value, torch.zeros_like(value))


def box_masks(boxes: torch.Tensor, image_index: torch.Tensor, batch: int, height: int, width: int):
    """Returns (fg, bg), each (batch, height, width), float32 (float64 for float64 boxes)."""
    dtype = acc_dtype(boxes.dtype)
    wmin, hmin, wmax, hmax, value = box_spans(boxes, image_index, batch, height, width)
    xs = torch.arange(width, device=boxes.device, dtype=dtype)
    ys = torch.arange(height, device=boxes.device, dtype=dtype)
    cols = (xs >= wmin[:, None]) & (xs <= wmax[:, None])  # (K, W)
    rows = (ys >= hmin[:, None]) & (ys <= hmax[:, None])  # (K, H)
    cover = (rows[:, :, None] & cols[:, None, :]).to(dtype) * value[:, None, None]
    fg = torch.zeros(batch, height * width, dtype=dtype, device=boxes.device)
    if batch > 0 and boxes.shape[0] > 0:
        index = image_index.clamp(0, batch - 1)  # boxes of no image have value 0: the max ignores them
        cover = cover.reshape(-1, height * width)
        fg = fg.scatter_reduce(0, index[:, None].expand_as(cover), cover, "amax", include_self=True)
    background = (fg == 0).to(dtype)
    count = background.sum(dim=1, keepdim=True)
    bg = background / torch.where(count == 0, torch.ones_like(count), count)
    return fg.reshape(batch, height, width), bg.reshape(batch, height, width)
