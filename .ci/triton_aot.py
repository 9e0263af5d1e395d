"""Compile every Triton kernel for a real GPU on a machine without one, through kdops' real wrappers.

The Triton interpreter (what the parity tests run on the CPU) accepts code the compiler rejects and
keeps Python floats in double precision, so it cannot prove the GPU path. Here a stand-in driver
reports a CUDA target (sm_90, sm_80, ...) and device/stream 0, every kernel launch becomes an
ahead-of-time compile (JITFunction.run with warmup=True), and the public ops run with
backend="triton" on CPU tensors, forward and backward, in each dtype: exactly the signatures and
constexprs a GPU run builds. Triton's bundled ptxas then reports registers, spills and shared memory.

    python .ci/triton_aot.py --arch 90 80 --out build/triton_aot.json     (CI; exit 1 on any error)
    python .ci/triton_aot.py --arch 90 --dtypes fp64 --ops soft_ce bounded  (a few ops while tuning)

Test infrastructure only: never imported by kdops.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # real JITFunctions: set before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver, jit  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kdops  # noqa: E402
from kdops import _backend  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


class AheadOfTimeDriver:
    """What JITFunction.run asks of the active driver, for a GPU that is not there."""

    def __init__(self, capability: int):
        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


class Recorder:
    """Forces every launch to compile only, and remembers each compiled kernel once."""

    def __init__(self):
        self.kernels = {}
        self.context = ""
        self._run = jit.JITFunction.run

    def __enter__(self):
        recorder = self

        def run(fn, *args, grid, warmup, **kwargs):
            kernel = recorder._run(fn, *args, grid=grid, warmup=True, **kwargs)
            recorder.kernels.setdefault(kernel.hash, (fn.fn.__module__ + "." + fn.fn.__name__, recorder.context,
                                                      kernel))
            return kernel

        jit.JITFunction.run = run
        return self

    def __exit__(self, *exc):
        jit.JITFunction.run = self._run


def _randn(*shape, dtype, grad=False):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).requires_grad_(grad)


def _backward(*outputs):
    loss = sum(o.float().sum() for o in outputs if o.requires_grad)
    loss.backward()


def _features(dtype, shape):
    return _randn(*shape, dtype=dtype, grad=True), _randn(*shape, dtype=dtype)


def _boxes(n, h, w):
    return [torch.tensor([[0.5, 1.0, w * 0.6, h * 0.7], [1.0, 0.0, 2.0, 2.0]]) for _ in range(n)]


# Each case runs one op (forward and backward) with backend="triton"; shapes cover one and several
# blocks per row, odd sizes and the options that change the compiled specialisation.
FEATURE_SHAPES = [(2, 7, 13, 21), (2, 256, 25, 42)]
ROW_SHAPES = [(13, 5), (512, 91)]
LD_SHAPES = [(13, 17), (4096, 16)]  # box-edge distributions: GFL's 17 bins, Ultralytics' 16


def _cases():
    for shape in FEATURE_SHAPES:
        n, c, h, w = shape
        fg, bg = kdops.box_masks(_boxes(n, h, w), (h, w), backend="triton")

        def attention(dtype, shape=shape):
            s, _ = _features(dtype, shape)
            _backward(*kdops.attention_masks(s, temperature=0.5, backend="triton"))

        def imitation(dtype, shape=shape):
            for loss, normalize in (("mse", "batch"), ("l1", "mask")):
                s, t = _features(dtype, shape)
                mask = torch.rand(shape[0], shape[2], shape[3]).to(dtype)
                _backward(kdops.feature_imitation(s, t, mask=mask, loss=loss, normalize=normalize, backend="triton"))

        def focal(dtype, shape=shape, fg=fg, bg=bg):
            s, t = _features(dtype, shape)
            _backward(kdops.fgd_focal_loss(s, t, fg=fg, bg=bg, backend="triton"))

        def context(dtype, shape=shape):
            s, _ = _features(dtype, shape)
            weight, bias = _randn(1, shape[1], 1, 1, dtype=dtype, grad=True), _randn(1, dtype=dtype, grad=True)
            _backward(kdops.gc_context(s, weight, bias, backend="triton"))

        def relation(dtype, shape=shape):
            s, t = _features(dtype, shape)
            ds, dt = _randn(shape[0], shape[1], dtype=dtype, grad=True), _randn(shape[0], shape[1], dtype=dtype)
            _backward(kdops.relation_mse(s, t, delta_s=ds, delta_t=dt, backend="triton"))

        def feature_pass(dtype, shape=shape, fg=fg, bg=bg):
            s, t = _features(dtype, shape)
            gc = dict(student_gc_weight=_randn(1, shape[1], 1, 1, dtype=dtype, grad=True),
                      student_gc_bias=_randn(1, dtype=dtype),
                      teacher_gc_weight=_randn(1, shape[1], 1, 1, dtype=dtype, grad=True),
                      teacher_gc_bias=_randn(1, dtype=dtype))
            out = kdops.fgd_feature_pass(s, t, fg=fg, bg=bg, **gc, backend="triton")
            _backward(*(o for o in out if torch.is_tensor(o)))

        def cwd(dtype, shape=shape):
            s, t = _features(dtype, shape)
            _backward(kdops.cwd_loss(s, t, tau=2.0, backend="triton"))

        def pkd(dtype, shape=shape):
            s, t = _features(dtype, shape)
            _backward(kdops.pkd_loss(s, t, backend="triton"))

        yield from ((f"{fn.__name__}{shape}", fn) for fn in
                    (attention, imitation, focal, context, relation, feature_pass, cwd, pkd))

    for rows, classes in ROW_SHAPES:
        def soft_ce(dtype, rows=rows, classes=classes):
            target = torch.randint(-1, classes, (rows,))
            for kw in ({}, {"target": target, "mu": 0.5, "class_weight": torch.rand(classes)}):
                s, t = _randn(rows, classes, dtype=dtype, grad=True), _randn(rows, classes, dtype=dtype)
                _backward(kdops.soft_cross_entropy(s, t, temperature=2.0, backend="triton", **kw))

        def soft_bce(dtype, rows=rows):
            for kw in ({}, {"target": torch.randint(-1, 2, (rows * 40,)), "mu": 0.5}):
                s, t = _randn(rows * 40, dtype=dtype, grad=True), _randn(rows * 40, dtype=dtype)
                _backward(kdops.soft_binary_cross_entropy(s, t, backend="triton", **kw))

        def bounded(dtype, rows=rows):
            y = _randn(rows, 4, dtype=dtype)
            for weight in (None, torch.rand(rows)):
                s, t = _randn(rows, 4, dtype=dtype, grad=True), _randn(rows, 4, dtype=dtype)
                _backward(kdops.bounded_regression(s, t, target=y, margin=0.1, weight=weight, backend="triton"))

        def quality_focal_kd(dtype, rows=rows, classes=classes):
            for beta, weight, normalize in ((1.0, None, "mean"), (2.0, torch.rand(rows), "weight"),
                                            (0.5, torch.rand(rows), "sum")):
                s, t = _randn(rows, classes, dtype=dtype, grad=True), _randn(rows, classes, dtype=dtype)
                _backward(kdops.quality_focal_kd(s, t, weight=weight, beta=beta, normalize=normalize,
                                                 backend="triton"))

        yield from ((f"{fn.__name__}({rows}, {classes})", fn)
                    for fn in (soft_ce, soft_bce, bounded, quality_focal_kd))

    for rows, bins in ROW_SHAPES + LD_SHAPES:
        def ld_loss(dtype, rows=rows, bins=bins):
            for temperature, weight, normalize in ((10.0, None, "mean"), (2.0, torch.rand(rows), "weight"),
                                                   (10.0, torch.rand(rows), "sum")):
                s, t = _randn(rows, bins, dtype=dtype, grad=True), _randn(rows, bins, dtype=dtype)
                _backward(kdops.ld_loss(s, t, weight=weight, temperature=temperature, normalize=normalize,
                                        backend="triton"))

        yield f"ld_loss({rows}, {bins})", ld_loss


def _ptxas():
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.path.exists(path) else None


def _resources(ptx: str, capability: int, ptxas: str) -> dict:
    """Registers, spill bytes and shared memory per kernel, from `ptxas -v` (in a private folder, so
    concurrent runs never read each other's kernel)."""
    # The PTX names its own target (a kernel cached from another capability's run keeps its own).
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)
    arch = target.group(1) if target else f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as workdir:
        src = os.path.join(workdir, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", f"-arch={arch}", src, "-o", os.devnull], capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas -arch={arch} failed: {text.strip()[-500:]}")
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else 0  # noqa: E731
    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "shared": number(r"(\d+) bytes smem")}


def compile_all(capabilities, dtypes, ops=None):
    _backend.triton_interpreting = lambda: True  # let backend="triton" take CPU tensors
    report, errors = [], []
    ptxas = _ptxas()
    for capability in capabilities:
        driver.set_active(AheadOfTimeDriver(capability))
        with Recorder() as recorder:
            for name, case in _cases():
                if ops and not name.startswith(tuple(ops)):
                    continue
                for dtype_name in dtypes:
                    recorder.context = f"{name} {dtype_name}"
                    try:
                        case(DTYPES[dtype_name])
                    except Exception as exc:  # a compile error: reported, the others still run
                        last_line = (str(exc).strip().splitlines() or [""])[-1][:500]
                        errors.append({"sm": capability, "case": recorder.context,
                                       "error": f"{type(exc).__name__}: {last_line}",
                                       "traceback": traceback.format_exc()[-4000:]})
        for kernel_hash, (kernel_name, context, kernel) in recorder.kernels.items():
            row = {"sm": capability, "kernel": kernel_name, "first_case": context,
                   "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages}
            if ptxas is not None:
                row.update(_resources(kernel.asm["ptx"], capability, ptxas))
            report.append(row)
    return report, errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--out", default="build/triton_aot.json", help="JSON report")
    parser.add_argument("--ops", nargs="+", help="only the cases whose name starts with one of these, e.g. soft_ce "
                        "bounded (default: all)")
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report, errors = compile_all(args.arch, args.dtypes, args.ops)
    with open(args.out, "w") as f:
        json.dump({"kernels": report, "errors": errors}, f, indent=1)
    per_kernel = collections.defaultdict(lambda: [0, 0, 0])
    for row in report:
        entry = per_kernel[(row["sm"], row["kernel"])]
        entry[0] += 1
        entry[1] = max(entry[1], row.get("registers", 0))
        entry[2] = max(entry[2], row.get("spill_stores", 0) + row.get("spill_loads", 0))
    for (sm, kernel), (count, regs, spills) in sorted(per_kernel.items()):
        print(f"sm_{sm} {kernel}: {count} specialisations, max {regs} registers, max {spills} spill bytes")
    print(f"triton AOT: {len(report)} compilations of {len({r['kernel'] for r in report})} kernels for "
          f"sm_{', sm_'.join(map(str, args.arch))}; {len(errors)} errors; report {args.out}")
    for error in errors:
        print(f"ERROR sm_{error['sm']} {error['case']}: {error['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
