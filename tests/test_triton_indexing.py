"""64-bit indexing in the Triton kernels, checked without allocating 2^31 elements.

* Every kernel is compiled ahead of time for sm_90 (tests/triton_aot.py, in a subprocess: the test
  session may run the interpreter) and its Triton IR must widen each program id to int64 before any
  arithmetic (kdops.triton._common.program_id64), so tile * BLOCK, row * HW and n * C * HW never wrap;
  the PTX must never multiply or shift %ctaid.x in 32 bits.
* The box-mask kernels run on one tile of a 46341 x 46341 map (2^31 + 4633 pixels) and on per-tile
  counts that add past 2^31 - 1: H * W and the background count must not wrap.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

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
    out = subprocess.run([sys.executable, "-c", _COMPILE, TESTS], capture_output=True, text=True, env=env, cwd=ROOT,
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


def test_program_ids_are_int64_in_every_kernel(compiled):
    failures = {}
    for kernel, versions in compiled.items():
        for ttir, ptx in versions:
            bad = _narrow_program_id_uses(ttir) + _narrow_ctaid_x_products(ptx)
            if bad:
                failures[kernel] = bad[:3]
    assert not failures, json.dumps(failures, indent=1)


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
