"""An image file as the tensor a detector reads: float RGB, C x H x W, in [0, 1] by the file's own range.

8-bit modes (grey, palette, RGB, RGBA, CMYK, ...) are divided by 255; 16-bit grey by the top of its
bit depth (65535, or 2^b - 1 for a TIFF that says it has b < 16 bits); a float image is read as it is
when its values lie in [0, 1]. Anything else (a float image outside [0, 1], 32-bit integers) is
refused, naming the file and its range, rather than clipped: Pillow's convert("RGB") would make a
float image all black and a 16-bit one nearly all white. Grey images become three equal channels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from kdtrain.data.coco_json import DatasetError

EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
READS = "8-bit images, 16-bit grey images and float images with values in [0, 1]"
_TIFF_BITS_PER_SAMPLE = 258


def _top_of_range(im: Image.Image) -> int:
    """The largest value of a 16-bit grey image's bit depth."""
    bits = getattr(im, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE, 16)
    bits = bits[0] if isinstance(bits, tuple) else bits
    return 2 ** int(bits) - 1 if 0 < int(bits) <= 16 else 65535


def _problem(im: Image.Image, values) -> str | None:
    """Why the (loaded) image cannot be read as intensities in [0, 1], else None."""
    if im.mode in EIGHT_BIT or im.mode in SIXTEEN_BIT:
        return None
    if im.mode == "F":
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if np.isfinite(values).all() and 0 <= low and high <= 1:
            return None
        return (f"a float image with values in [{low:g}, {high:g}], not [0, 1]: scale it to [0, 1] or save it "
                "as an 8- or 16-bit image")
    return f"mode {im.mode} ({'32-bit integers' if im.mode == 'I' else 'unsupported'}); kdtrain reads {READS}"


def check_image(im: Image.Image) -> str | None:
    """Why a loaded image cannot be read, else None: the up-front check (kdtrain/data/image_check.py)."""
    if im.mode in EIGHT_BIT or im.mode in SIXTEEN_BIT:  # no pixel needs reading
        return None
    return _problem(im, np.asarray(im))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """Float RGB C x H x W in [0, 1]; ValueError saying why for an image that has no such reading."""
    if im.mode in EIGHT_BIT:
        return pil_to_tensor(im.convert("RGB")).float().div_(255.0)
    values = np.asarray(im)
    problem = _problem(im, values)
    if problem:
        raise ValueError(problem)
    grey = torch.from_numpy(values.astype(np.float32))
    if im.mode in SIXTEEN_BIT:
        grey = grey.div_(_top_of_range(im)).clamp_(0, 1)
    return grey.expand(3, *grey.shape).contiguous()


def read_image(path: str) -> torch.Tensor:
    """The image at ``path`` (to_tensor); DatasetError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return to_tensor(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None
