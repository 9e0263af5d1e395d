"""Inputs shared by the FGD op tests: boxes that exercise every docs/math.md §2 case, features kept off the
loss kinks."""

import torch

from kdops.reference import attention_masks as attention_reference
from kdops.reference import box_masks as box_reference
from support.numerics import randn


def random_boxes(n, height, width, seed, per_image=(0, 6), dtype=torch.float32, device="cpu"):
    """One (K_i, 4) tensor per image: overlapping, crossing or touching the border, sub-pixel and
    entirely-outside boxes; image 0 has none when n > 1 (an image without boxes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = 0 if (i == 0 and n > 1) else int(torch.randint(max(per_image[0], 1), per_image[1] + 1, (), generator=g))
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([width + 2.0, height + 2.0]) - 1.0
        wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([width / 2 + 0.5, height / 2 + 0.5])
        tiny = torch.rand(k, generator=g) < 0.25  # sub-pixel boxes
        wh[tiny] *= 0.05
        out.append(torch.cat([xy, xy + wh], dim=1).to(device=device, dtype=dtype))
    return out


def masks(n, height, width, seed, device="cpu", dtype=torch.float32):
    boxes = random_boxes(n, height, width, seed)
    packed = torch.cat(boxes)
    index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
    fg, bg = box_reference.box_masks(packed, index, n, height, width)
    return fg.to(device=device, dtype=dtype), bg.to(device=device, dtype=dtype)


def attention_off_kinks(student, teacher, temperature, margin=1e-4) -> bool:
    """True when no |A^s - A^t| entry is within `margin` of the |.| kink (rows of length 1 are exactly 0
    on both sides and are fine)."""
    ok = True
    for a, b in zip(attention_reference.attention_masks(student.double(), temperature=temperature),
                    attention_reference.attention_masks(teacher.double(), temperature=temperature)):
        d = (a - b).reshape(a.shape[0], -1)
        if d.shape[1] > 1:
            ok &= bool((d.abs() > margin).all())
    return ok


def focal_inputs(shape, dtype, device, seed, temperature):
    """Student, teacher and box masks, redrawn until |A^s - A^t| stays off its kink."""
    for attempt in range(50):
        s = randn(shape, dtype, device, seed + 7 * attempt)
        t = randn(shape, dtype, device, seed + 7 * attempt + 1)
        if attention_off_kinks(s.cpu(), t.cpu(), temperature):
            break
    fg, bg = masks(shape[0], shape[2], shape[3], seed, device)
    return s, t, fg, bg
