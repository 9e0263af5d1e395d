"""kdops.box_masks (docs/math.md §2): every backend against the reference, the contract's semantics,
registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import box_masks as reference
from support.backends import backend_params, on_cpu, opcheck_params, registered_op, require_backend
from support.fgd_inputs import random_boxes
from support.parity import base_seed, described

SIZES = [(13, 21), (1, 1), (37, 41), (5, 3)]
BOX_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _packed(boxes):
    index = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
    return torch.cat(boxes), index


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", BOX_DTYPES)
def test_matches_reference_exactly(backend, device, dtype):
    base = base_seed()  # fresh boxes every run
    for i, (h, w) in enumerate(SIZES):
        with described(f"size {(h, w)}, seed {base + i} (KDOPS_TEST_SEED={base} reruns these boxes)"):
            boxes = random_boxes(3, h, w, base + i, dtype=dtype, device=device)
            fg, bg = kdops.box_masks(boxes, (h, w), backend=backend)
            packed, index = _packed([b.cpu() for b in boxes])
            exp_fg, exp_bg = reference.box_masks(packed, index, 3, h, w)
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            assert fg.dtype == bg.dtype == acc and fg.shape == (3, h, w) and fg.device.type == device
            assert torch.equal(fg.cpu(), exp_fg) and torch.equal(bg.cpu(), exp_bg)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_spec_semantics_by_hand(backend):
    """floor/ceil inclusive ranges, 1/(whole size), smallest box wins, clipping, outside boxes, empty images."""
    boxes = [torch.tensor([[1.2, 0.5, 3.7, 2.0],     # cols 1..4, rows 0..2: value 1/12
                           [2.5, 1.5, 2.5, 1.5],     # a point: cols 2..3, rows 1..2: value 1/4 (smallest wins)
                           [-3.0, 3.2, 0.4, 9.0],    # cols -3..1, rows 3..9: value 1/35, written on cols 0..1, row 3
                           [6.5, 0.0, 9.0, 1.0]]),   # entirely right of the 6-wide map: nothing
             torch.zeros(0, 4)]                      # an image without boxes
    fg, bg = kdops.box_masks(boxes, (4, 6), backend=backend)
    expected = torch.zeros(2, 4, 6)
    expected[0, 0:3, 1:5] = 1 / 12
    expected[0, 1:3, 2:4] = 1 / 4
    expected[0, 3, 0:2] = 1 / 35
    torch.testing.assert_close(fg, expected, rtol=0, atol=0)
    background = (expected[0] == 0).float()
    torch.testing.assert_close(bg[0], background / background.sum(), rtol=0, atol=0)
    torch.testing.assert_close(bg[1], torch.full((4, 6), 1 / 24), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
def test_a_box_crossing_the_border_keeps_its_whole_size_as_the_official_code(backend, device):
    """FGD eq. 2 / the official code: value from the unclipped floor/ceil range; only the write is clipped.
    A ground-truth box ending on the image edge has ceil(x2 / stride) == W: one column past the map."""
    boxes = [torch.tensor([[0.5, 0.5, 2.2, 1.0],     # cols 0..3 (4) x rows 0..1 (2): 1/8, written on cols 0..2
                           [1.0, 2.0, 3.0, 4.0]],    # exactly on the right/bottom edges: cols 1..3, rows 2..4: 1/9
                          device=device)]
    fg, _ = kdops.box_masks(boxes, (4, 3), backend=backend)
    expected = torch.zeros(1, 4, 3)
    expected[0, 0:2, 0:3] = 1 / 8
    expected[0, 2:4, 1:3] = 1 / 9
    torch.testing.assert_close(fg.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_all_foreground_has_zero_background(backend):
    fg, bg = kdops.box_masks([torch.tensor([[0.0, 0.0, 5.0, 3.0]])], (4, 6), backend=backend)
    assert torch.all(fg == 1 / 24) and torch.all(bg == 0)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_packed_boxes_in_any_order_match_the_list(backend):
    boxes = random_boxes(4, 9, 11, 3)
    packed, index = _packed(boxes)
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    fg, bg = kdops.box_masks(packed[order], (9, 11), index[order], 4, backend=backend)
    exp_fg, exp_bg = kdops.box_masks(boxes, (9, 11), backend=backend)
    assert torch.equal(fg, exp_fg) and torch.equal(bg, exp_bg)


@pytest.mark.parametrize("backend,device", backend_params())
def test_unvalidated_bad_boxes_are_skipped_without_nan(backend, device):
    good = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    bad = torch.tensor([[float("nan"), 0.0, 3.0, 3.0], [0.0, float("inf"), 3.0, 3.0], [3.0, 0.0, 1.0, 3.0],
                        [0.0, -float("inf"), 1e30, 3.0], [0.0, 3.0, 3.0, 1.0]])
    fg, bg = kdops.box_masks([torch.cat([good, bad]).to(device)], (5, 5), validate=False, backend=backend)
    exp_fg, exp_bg = kdops.box_masks([good], (5, 5), backend="reference")
    assert torch.equal(fg.cpu(), exp_fg) and torch.equal(bg.cpu(), exp_bg)


def test_boxes_carry_no_gradient():
    boxes = [torch.tensor([[1.0, 1.0, 2.0, 2.0]], requires_grad=True)]
    fg, bg = kdops.box_masks(boxes, (4, 4))
    assert not fg.requires_grad and not bg.requires_grad


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("box_masks", backend)
    boxes, index = _packed(random_boxes(2, 6, 7, 5))
    opcheck(op, (boxes.to(device), index.to(device), 2, 6, 7))


def test_compile_fullgraph():
    def masks(b0, b1):
        fg, bg = kdops.box_masks([b0, b1], (6, 7))
        return fg * 2 + bg

    b0, b1 = random_boxes(2, 6, 7, 1, per_image=(2, 4))
    compiled = torch.compile(masks, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(b0, b1), masks(b0, b1))


@pytest.mark.parametrize("call,error,match", [
    (lambda: kdops.box_masks([torch.zeros(3, 5)], (4, 4)), ValueError, r"boxes\[0\] must have shape \(K, 4\)"),
    (lambda: kdops.box_masks([torch.zeros(3, 4, dtype=torch.long)], (4, 4)), TypeError, r"boxes\[0\] must be float16"),
    (lambda: kdops.box_masks([[0.0, 0.0, 1.0, 1.0]], (4, 4)), TypeError, r"boxes\[0\] must be a torch.Tensor"),
    (lambda: kdops.box_masks([torch.tensor([[0.0, float("nan"), 1.0, 1.0]])], (4, 4)), ValueError,
     "finite coordinates"),
    (lambda: kdops.box_masks([torch.tensor([[0.0, 0.0, float("inf"), 1.0]])], (4, 4)), ValueError,
     "finite coordinates"),
    (lambda: kdops.box_masks([torch.tensor([[2.0, 0.0, 1.0, 1.0]])], (4, 4)), ValueError, "x2 >= x1 and y2 >= y1"),
    (lambda: kdops.box_masks([torch.tensor([[0.0, 2.0, 1.0, 1.0]])], (4, 4)), ValueError, "x2 >= x1 and y2 >= y1"),
    (lambda: kdops.box_masks([torch.zeros(1, 4), torch.zeros(1, 4, device="meta")], (4, 4)), ValueError,
     r"boxes\[1\] is on meta but boxes\[0\] is on cpu"),
    (lambda: kdops.box_masks(torch.zeros(2, 4), (4, 4)), ValueError, "need image_index and batch_size"),
    (lambda: kdops.box_masks(torch.zeros(2, 4), (4, 4), torch.tensor([0, 2]), 2), ValueError,
     r"image_index must be in \[0, batch_size=2\)"),
    (lambda: kdops.box_masks(torch.zeros(2, 4), (4, 4), torch.tensor([0.0, 1.0]), 2), ValueError,
     "image_index must be an int32/int64 tensor"),
    (lambda: kdops.box_masks([torch.zeros(1, 4)], (4,)), ValueError, r"size must be \(height, width\)"),
    (lambda: kdops.box_masks([torch.zeros(1, 4)], (0, 4)), ValueError, "size must be >= 1"),
    (lambda: kdops.box_masks("boxes", (4, 4)), TypeError, "boxes must be a list"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match="boxes must have shape"):
        torch.ops.kdops.box_masks(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1, 4, 4)
    with pytest.raises(RuntimeError, match="image_index must be int64"):
        torch.ops.kdops.box_masks(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int32), 1, 4, 4)
