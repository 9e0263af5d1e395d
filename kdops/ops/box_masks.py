"""kdops.box_masks: FGD foreground / background masks from boxes (docs/math.md §2), on the boxes' device."""

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._registry import acc_empty
from kdops.reference import box_masks as reference

OP = "box_masks"


# No autograd: the masks are constants of the loss (boxes are detached before the call).
OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor boxes, Tensor image_index, int batch, int height, int width) -> (Tensor fg, Tensor bg)",
    fake=lambda a: (acc_empty(a.boxes, a.batch, a.height, a.width), acc_empty(a.boxes, a.batch, a.height, a.width)),
    reference=reference.box_masks))


def _pack(boxes, op: str):
    """A list of per-image (K_i, 4) tensors -> packed (K, 4) boxes and (K,) image indices (no host sync)."""
    if len(boxes) == 0:  # no image (N = 0): nothing names a device or dtype, so CPU float32 -> (0, H, W) masks
        return torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long)
    for i, b in enumerate(boxes):
        _check_boxes(b, op, f"boxes[{i}]")
        if b.device != boxes[0].device:
            raise ValueError(f"kdops.{op}: boxes[{i}] is on {b.device} but boxes[0] is on {boxes[0].device}; "
                             "all boxes must be on one device")
    device = boxes[0].device
    packed = torch.cat([b.detach() for b in boxes]) if len(boxes) > 1 else boxes[0].detach()
    index = torch.cat([torch.full((b.shape[0],), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)])
    return packed, index


def _check_boxes(b, op: str, arg: str) -> None:
    _checks.float_tensor(b, op, arg)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"kdops.{op}: {arg} must have shape (K, 4) as (x1, y1, x2, y2), got {tuple(b.shape)}")


def _validate(boxes: Tensor, image_index: Tensor, batch: int, op: str) -> None:
    """Reject non-finite boxes, x2 < x1 or y2 < y1, and image indices outside [0, batch). Reads values: on a
    GPU this synchronises with the host."""
    bad = ~torch.isfinite(boxes).all(dim=1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"kdops.{op}: boxes must have finite coordinates; box {k} (of the packed boxes) is "
                         f"{boxes[k].tolist()}")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"kdops.{op}: boxes must have x2 >= x1 and y2 >= y1; box {k} (of the packed boxes) is "
                         f"{boxes[k].tolist()} (pass validate=False to skip such boxes instead)")
    bad = (image_index < 0) | (image_index >= batch)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"kdops.{op}: image_index must be in [0, batch_size={batch}); box {k} has "
                         f"{int(image_index[k])}")


def _size(size, op: str) -> Tuple[int, int]:
    if isinstance(size, torch.Tensor) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"kdops.{op}: size must be (height, width) as two ints, got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"kdops.{op}: size must be >= 1 in both dimensions, got {tuple(size)}")
    return int(size[0]), int(size[1])


def box_masks(boxes: Union[Sequence[Tensor], Tensor], size: Sequence[int], image_index: Optional[Tensor] = None,
              batch_size: Optional[int] = None, *, validate: Optional[bool] = None,
              backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """FGD foreground and background masks of a batch (docs/math.md §2), computed on the boxes' device.

    For a box (x1, y1, x2, y2) in feature-map pixels: wmin = floor(x1), wmax = ceil(x2), hmin = floor(y1),
    hmax = ceil(y2), an inclusive pixel range; the box writes 1 / ((hmax - hmin + 1) * (wmax - wmin + 1))
    (its whole size, FGD eq. 2) on the part of that range inside the map, and where boxes
    overlap the largest value (the smallest box) wins. bg = [fg == 0] / (number of such pixels of the
    image), all zeros when the whole map is foreground. A box entirely outside the map writes nothing;
    an image without boxes has fg = 0 and a uniform bg.

    Args:
        boxes: a list with one (K_i, 4) floating tensor per image (K_i may be 0), or one packed (K, 4)
            tensor together with `image_index` and `batch_size`. Boxes carry no gradient. An empty
            list (N = 0) gives (0, H, W) float32 masks on the CPU.
        size: (height, width) of the feature map.
        image_index: (K,) integer tensor, the image of each packed box.
        batch_size: the number of images N for packed boxes.
        validate: check the box values first and raise ValueError on non-finite coordinates, x2 < x1
            or y2 < y1, or image indices outside [0, N). None (default) validates CPU boxes in eager
            mode and skips the check on GPUs and under torch.compile, where it would synchronise with
            the host; unchecked invalid boxes are skipped by the kernels (they write nothing), so the
            masks never contain NaN.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        (fg, bg), each (N, height, width), float32 (float64 for float64 boxes), on the boxes' device.
    """
    height, width = _size(size, OP)
    if isinstance(boxes, torch.Tensor):
        _check_boxes(boxes, OP, "boxes")
        if image_index is None or batch_size is None:
            raise ValueError(f"kdops.{OP}: packed (K, 4) boxes need image_index and batch_size; or pass a list "
                             "with one (K_i, 4) tensor per image")
        _checks.tensor(image_index, OP, "image_index")
        if image_index.shape != (boxes.shape[0],) or image_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"kdops.{OP}: image_index must be an int32/int64 tensor of shape (K,) = "
                             f"({boxes.shape[0]},), got {image_index.dtype} {tuple(image_index.shape)}")
        if image_index.device != boxes.device:
            raise ValueError(f"kdops.{OP}: image_index is on {image_index.device} but boxes on {boxes.device}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"kdops.{OP}: batch_size must be an int >= 0, got {batch_size!r}")
        packed, index, batch = boxes.detach(), image_index.long(), batch_size
    elif isinstance(boxes, (list, tuple)):
        if image_index is not None or batch_size is not None:
            raise ValueError(f"kdops.{OP}: image_index and batch_size are for packed boxes, not for a list")
        packed, index = _pack(boxes, OP)
        batch = len(boxes)
    else:
        raise TypeError(f"kdops.{OP}: boxes must be a list of (K_i, 4) tensors or a packed (K, 4) tensor, "
                        f"got {type(boxes).__name__}")
    if validate is None:
        validate = packed.device.type == "cpu" and not torch.compiler.is_compiling()
    if validate:
        _validate(packed, index, batch, OP)
    which = _backend.resolve(OP, packed.device, backend)
    return OP_SPEC(which, boxes=packed, image_index=index, batch=batch, height=height, width=width)
