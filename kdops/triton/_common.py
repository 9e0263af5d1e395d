"""Helpers shared by the Triton kernels."""

import torch
import triton
import triton.language as tl

from kdops._layout import acc_dtype  # noqa: F401  (the kernels' modules import it from here)


def layout_constants(columns):
    """A kdops._layout layout as Triton constants (usable inside kernels): its width, then each column's index."""
    return (tl.constexpr(len(columns)), *(tl.constexpr(i) for i in range(len(columns))))


def tl_acc(dtype: torch.dtype):
    """acc_dtype as a Triton type."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def warps_for(block: int, acc: torch.dtype = torch.float32) -> int:
    """Warps for a loop over [block] tiles: at most 8 lanes per thread (4 in float64, whose values take two
    registers), so that kahan_add's accumulators (two values per lane each) stay in registers."""
    return max(4, block // (128 if acc == torch.float64 else 256))


def block_for(n: int, cap: int) -> int:
    """A power-of-two block covering n items, at most cap and at least 16."""
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


@triton.jit
def program_id64(axis: tl.constexpr):
    """tl.program_id(axis) as int64, so that offsets built from it (tile * BLOCK, row * HW, n * C * HW) never wrap
    past 2^31 - 1. Every kernel takes its program ids from here; lane offsets (tl.arange) stay int32."""
    return tl.program_id(axis).to(tl.int64)


@triton.jit
def kahan_add(total, comp, x):
    """total + x with Kahan compensation, per lane; returns the new (total, comp).

    `comp` is what rounding added too much, so the sum is total - comp (kahan_total). Start both at 0.
    """
    y = x - comp
    t = total + y
    # Where the total is inf or NaN there is no low part: inf and NaN then come out as a plain sum's.
    comp = tl.where(tl.abs(t) < float("inf"), (t - total) - y, 0.0)
    return t, comp


@triton.jit
def kahan_total(total, comp):
    """The compensated per-lane sums of a [BLOCK] accumulator, added over the lanes."""
    return tl.sum(total - comp, axis=0)


@triton.jit
def row_tile(tiles):
    """(row, tile) of a 1-D grid of rows * tiles programs. CUDA caps grid axes 1 and 2 at 65535 programs (a
    [rows, tiles] grid fails to launch past 65535 * BLOCK pixels) and axis 0 at 2^31 - 1."""
    pid = program_id64(0)
    return pid // tiles, pid % tiles


@triton.jit
def weighted(weight, term):
    """weight * term, exactly 0 where the weight is 0 whatever the term holds (docs/math.md §0: rows and pixels of
    weight 0 do not exist for an op; 0 * inf and 0 * NaN would be NaN). csrc/include/kdops/math/weighted.h."""
    return tl.where(weight == 0, 0.0, weight * term)


@triton.jit
def size64(n):
    """A size argument as int64, for `range(0, n, BLOCK)`: an int32 counter wraps negative at its last step when
    2^31 - BLOCK < n < 2^31 (Triton passes sizes >= 2^31 as int64 already) and the loop never ends."""
    return tl.cast(n, tl.int64)


@triton.jit
def acc_scalar(x, ACC: tl.constexpr):
    """A float argument in the accumulation type. Float arguments are annotated tl.float64: a Python float is
    otherwise an .f32 parameter, and float64 kernels would get a float32 temperature, weight or 1/n on a GPU."""
    return tl.full([], x, ACC)


@triton.jit
def scaled_softmax_row(x_ptr, out_ptr, length, scale, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out = length * softmax(x * scale) over one row of `length` values, in three streaming passes."""
    length = size64(length)
    offs = tl.arange(0, BLOCK)
    row_max = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=float("-inf")).to(ACC)
        row_max = tl.maximum(row_max, x)  # shifted before scaled below: x * scale - max may be one FMA
    mx = tl.max(row_max, axis=0)
    row_sum = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=float("-inf")).to(ACC)
        row_sum, comp = kahan_add(row_sum, comp, tl.where(idx < length, tl.exp((x - mx) * scale), 0.0))
    factor = length / kahan_total(row_sum, comp)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        tl.store(out_ptr + idx, tl.exp((x - mx) * scale) * factor, mask=idx < length)


@triton.jit
def scaled_softmax_grad_row(a_ptr, g_ptr, out_ptr, length, inv_temp, post_scale, BLOCK: tl.constexpr,
                            ACC: tl.constexpr):
    """out = inv_temp * a * (g - sum(a * g) / length) * post_scale: the backward of length * softmax."""
    length = size64(length)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        a = tl.load(a_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        g = tl.load(g_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        acc, comp = kahan_add(acc, comp, a * g)
    weighted = kahan_total(acc, comp) / length
    for start in range(0, length, BLOCK):
        idx = start + offs
        a = tl.load(a_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        g = tl.load(g_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        tl.store(out_ptr + idx, inv_temp * a * (g - weighted) * post_scale, mask=idx < length)
