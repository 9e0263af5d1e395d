"""64-bit indexing in the Triton kernels, checked without allocating 2^31 elements.

* Every kernel is compiled ahead of time for sm_90 (.ci/triton_aot.py, in a subprocess: the test
  session may run the interpreter) and its Triton IR must widen each program id to int64 before any
  arithmetic (kdops.triton._common.program_id64), so tile * BLOCK, row * HW and n * C * HW never wrap;
  the PTX must never multiply or shift %ctaid.x in 32 bits. (The compile takes minutes: these tests
  are in the stress tier.)
  Every strided loop over a runtime size counts in int64 (an int32 counter wraps at its last step when
  the size is just under 2^31), and no float argument is an .f32 parameter (float64 kernels would get
  float32 scalars).
* The box-mask kernels run on one tile of a 46341 x 46341 map (2^31 + 4633 pixels) and on per-tile
  counts that add past 2^31 - 1: H * W and the background count must not wrap.
* Every op, forward and backward, on meta tensors of huge shapes: each launch grid is captured instead of
  run and must fit CUDA's limits (axis 0 below 2^31, axes 1 and 2 at most 65535).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CI = os.path.join(ROOT, ".ci")

# Compiles the cases of triton_aot.py on its smallest shapes (every kernel, fp32) for sm_90 and prints
# {kernel: [[ttir, ptx], ...]} as JSON.
_COMPILE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import triton_aot
from triton.runtime import driver
triton_aot._backend.triton_interpreting = lambda: True
driver.set_active(triton_aot.AheadOfTimeDriver(90))
with triton_aot.Recorder() as recorder:
    for name, case in triton_aot._cases():
        if name.endswith((str(triton_aot.FEATURE_SHAPES[0]), str(triton_aot.ROW_SHAPES[0]))):
            case(triton_aot.DTYPES["fp32"])
kernels = {}
for name, _, kernel in recorder.kernels.values():
    kernels.setdefault(name, []).append([kernel.asm["ttir"], kernel.asm["ptx"]])
print(json.dumps(kernels))
"""


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE, CI], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    if out.returncode != 0:
        pytest.fail(f"ahead-of-time compile failed:\n{out.stderr[-3000:]}")
    kernels = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(kernels) >= 30, sorted(kernels)
    return kernels


def _narrow_program_id_uses(ttir: str):
    """Lines that use a tt.get_program_id result other than to sign-extend it to i64."""
    bad = []
    for name in re.findall(r"(%[\w.$-]+) = tt\.get_program_id", ttir):
        use = re.compile(re.escape(name) + r"(?![\w.$-])")
        for line in ttir.splitlines():
            if "tt.get_program_id" in line or not use.search(line):
                continue
            if not re.search(r"arith\.extsi " + re.escape(name) + r" : i32 to i64", line):
                bad.append(line.strip())
    return bad


def _narrow_ctaid_x_products(ptx: str):
    """32-bit multiplies or shifts of %ctaid.x (the tile or row axis, up to 2^31 - 1: products need 64 bits)."""
    bad = []
    for reg in re.findall(r"mov\.u32\s+(%r\d+), %ctaid\.x;", ptx):
        narrow = re.compile(r"^\s*(mul\.lo\.[su]32|mad\.lo\.[su]32|shl\.b32)\s+%r\d+, [^;]*" + re.escape(reg) + r"\b")
        bad += [line.strip() for line in ptx.splitlines() if narrow.search(line)]
    return bad


@pytest.mark.stress
def test_program_ids_are_int64_in_every_kernel(compiled):
    failures = {}
    for kernel, versions in compiled.items():
        for ttir, ptx in versions:
            bad = _narrow_program_id_uses(ttir) + _narrow_ctaid_x_products(ptx)
            if bad:
                failures[kernel] = bad[:3]
    assert not failures, json.dumps(failures, indent=1)


def _narrow_strided_loops(ttir: str):
    """int32 scf.for loops with a runtime upper bound and a step other than 1: the counter passes the bound by up to
    step - 1, which wraps negative (and never ends) when the bound is within a step of 2^31."""
    loops = re.findall(r"scf\.for %\S+ = \S+ to (%[\w.$-]+) step (%[\w.$-]+).*?: i32\b", ttir)
    return [(bound, step) for bound, step in loops if not re.match(r"%c\d+_i32$", bound) and step != "%c1_i32"]


@pytest.mark.stress
def test_strided_loops_count_in_int64(compiled):
    failures = {}
    for kernel, versions in compiled.items():
        for ttir, _ in versions:
            # the loop syntax _narrow_strided_loops parses is still Triton's
            assert "scf.for" not in ttir or re.search(r"scf\.for .*: i(32|64)\b", ttir), ttir
            if bad := _narrow_strided_loops(ttir):
                failures[kernel] = bad[:3]
    assert not failures, json.dumps(failures, indent=1)


@pytest.mark.stress
def test_float_arguments_are_float64_parameters(compiled):
    # A Python float becomes an .f32 parameter unless the argument is annotated tl.float64 (_common.acc_scalar).
    failures = {kernel: re.findall(r"\.param \.f32 \w+", ptx) for kernel, versions in compiled.items()
                for _, ptx in versions if ".param .f32" in ptx}
    assert not failures, json.dumps(failures, indent=1)
    assert any(".param .f64" in ptx for versions in compiled.values() for _, ptx in versions)


@pytest.mark.stress
def test_background_count_is_int64(compiled):
    for ttir, _ in compiled["kdops.triton.box_masks._bg_kernel"]:
        reduce_ = re.search(r'"tt\.reduce".*?tt\.reduce\.return [^:]*: (\w+)', ttir, re.S)
        assert reduce_ and reduce_.group(1) == "i64", ttir


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_box_mask_tile_of_a_plane_past_2_31_pixels():
    from kdops.triton import box_masks

    side = 46341  # side * side = 2^31 + 4633: H * W wraps negative in int32
    block = 128
    device = _device()
    boxes = torch.tensor([[0.0, 0.0, 9.0, 0.0]], device=device)  # covers pixels 0..9 of row 0
    index = torch.zeros(1, dtype=torch.int32, device=device)
    fg = torch.full((block,), -1.0, device=device)  # only the first tile is launched: fg is that tile
    zeros = torch.full((1,), -1, dtype=torch.int32, device=device)
    box_masks._fg_kernel[(1, 1)](boxes, index, fg, zeros, 1, side, side, side * side, 1, BLOCK_P=block, BLOCK_K=16,
                                 ACC=box_masks.tl_acc(torch.float32))
    expected = torch.zeros(block)
    expected[:10] = 1.0 / 10.0
    torch.testing.assert_close(fg.cpu(), expected, rtol=0, atol=0)
    assert zeros.item() == block - 10


def test_background_count_past_2_31():
    from kdops.triton import box_masks

    block, tiles = 16, 3
    device = _device()
    zeros = torch.full((1, tiles), 2 ** 30, dtype=torch.int32, device=device)  # 3 * 2^30 background pixels
    fg = torch.zeros(block, dtype=torch.float64, device=device)
    bg = torch.full((block,), -1.0, dtype=torch.float64, device=device)
    box_masks._bg_kernel[(1, 1)](fg, zeros, bg, block, tiles, BLOCK_P=block, BLOCK_T=16,
                                 ACC=box_masks.tl_acc(torch.float64))
    assert torch.equal(bg.cpu(), torch.full((block,), 1.0 / (3 * 2 ** 30), dtype=torch.float64))


# CUDA's grid limits: 2^31 - 1 programs on axis 0, 65535 on axes 1 and 2.
GRID_LIMITS = (2 ** 31 - 1, 65535, 65535)
# 67.2M pixels per plane: more than 65535 tiles of 1024; 2^22 rows of 1000 classes; 2^31 + 40 anchors.
HUGE_FEATURES = [(2, 3, 8200, 8200), (1024, 2048, 3, 5)]
HUGE_ROWS = [(2 ** 22, 1000), (2 ** 31 + 40, 1)]


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _feature_ops(shape):
    """Each feature op's forward, then its backward on the forward's outputs, on meta tensors."""
    from kdops.triton import (attention_masks, box_masks, cwd_loss, feature_imitation, fgd_feature_pass,
                              fgd_focal_loss, gc_context, pkd_loss, relation_mse)

    n, c, h, w = shape
    s, t, scalar, mask = _meta(*shape), _meta(*shape), _meta(), _meta(n, h, w)
    fg, bg = box_masks.forward(_meta(5, 4), _meta(5, dtype=torch.int64), n, h, w)
    spatial, channel = attention_masks.forward(s, 0.5)
    attention_masks.backward(spatial, channel, s, spatial, channel, 0.5)
    _, stats = cwd_loss.forward(s, t, 2.0)
    cwd_loss.backward(scalar, s, t, stats, 2.0)
    _, norm = feature_imitation.forward(s, t, mask, 0, 1)
    feature_imitation.backward(scalar, s, t, mask, norm, 0)
    _, terms, t_sp, t_ch, pixel, chan = fgd_focal_loss.forward(s, t, fg, bg, 0.5, 1.0, 0.5, 0.1)
    fgd_focal_loss.backward(scalar, terms, s, t, fg, bg, t_sp, t_ch, pixel, chan, 1.0, 0.5, 0.1)
    weight, bias = _meta(1, c, 1, 1), _meta(1)
    context, probs = gc_context.forward(s, weight, bias)
    gc_context.backward(context, s, weight, context, probs, True)
    out = fgd_feature_pass.forward(s, t, fg, bg, weight, bias, weight, bias, 0.5, 1.0, 0.5, 0.1)
    loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, *rest = out
    fgd_feature_pass.backward(loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, s, t, fg, bg, weight, weight, ctx_s, ctx_t,
                              *rest, 1.0, 0.5, 0.1)
    _, stats = pkd_loss.forward(s, t)
    pkd_loss.backward(scalar, s, t, stats)
    delta = _meta(n, c)
    relation_mse.forward(s, t, delta, delta)
    relation_mse.backward(scalar, s, t, delta, delta)


def _row_ops(shape):
    from kdops.triton import (bounded_regression, ld_loss, quality_focal_kd, soft_binary_cross_entropy,
                              soft_cross_entropy)

    rows, classes = shape
    s, t, scalar, target = _meta(rows, classes), _meta(rows, classes), _meta(), _meta(rows, dtype=torch.int64)
    _, norm, stats = soft_cross_entropy.forward(s, t, _meta(classes), target, 2.0, 0.5, -1)
    soft_cross_entropy.backward(scalar, s, t, _meta(classes), target, norm, stats, 2.0, 0.5, -1)
    _, norm = soft_binary_cross_entropy.forward(s, t, None, 1.0, 1.0, 2.0, 0.0, -1)
    soft_binary_cross_entropy.backward(scalar, s, t, None, norm, 1.0, 1.0, 2.0, 0.0, -1)
    _, norm, stats = ld_loss.forward(s, t, _meta(rows), 10.0, "weight")
    ld_loss.backward(scalar, s, t, _meta(rows), norm, stats, 10.0)
    _, norm = quality_focal_kd.forward(s, t, _meta(rows), 0.5, "weight")
    quality_focal_kd.backward(scalar, s, t, _meta(rows), norm, 0.5)
    box = _meta(rows, 4)
    _, norm = bounded_regression.forward(box, box, box, _meta(rows), 0.1)
    bounded_regression.backward(scalar, box, box, box, _meta(rows), norm, 0.1)


@pytest.mark.parametrize("ops,shape", [(_feature_ops, s) for s in HUGE_FEATURES] + [(_row_ops, s) for s in HUGE_ROWS])
def test_launch_grids_fit_cuda_limits(monkeypatch, ops, shape):
    from triton.runtime.jit import KernelInterface

    grids = []

    def capture(kernel, grid):
        def launch(*args, **kwargs):
            name = f"{kernel.fn.__module__}.{kernel.fn.__name__}"
            grids.append((name, tuple(grid(kwargs) if callable(grid) else grid)))
        return launch

    monkeypatch.setattr(KernelInterface, "__getitem__", capture)
    ops(shape)
    assert len({name for name, _ in grids}) >= (30 if ops is _feature_ops else 13), grids
    too_big = [(name, grid) for name, grid in grids if any(g > limit for g, limit in zip(grid, GRID_LIMITS))]
    assert not too_big, too_big
