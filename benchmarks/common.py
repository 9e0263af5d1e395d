"""Shared benchmark machinery: shapes, the implementations compared, one fwd+bwd timing per case.

Every case times forward + backward of one loss with pytest-benchmark and compares:
  reference   the pure-PyTorch reference (eager)
  compiled    torch.compile of the same reference (compile time excluded by warm-up)
  <backend>   each fused kdops backend that can run on this device (cpu; cuda, triton)
Ratios against the first two are computed from the JSON by benchmarks/report.py. On GPU the
achieved GB/s (minimum bytes a fused pass must move / median time) is recorded next to the
device's measured copy bandwidth, and the peak memory above the inputs in extra_info.
"""

import functools
import os
import time

import torch

import kdops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# Faster R-CNN FPN at 800x1333 (padded to 800x1344), C = 256 (docs/math.md "Shapes that matter").
FPN_LEVELS = {"P2": (200, 336), "P3": (100, 168), "P4": (50, 84), "P5": (25, 42), "P6": (13, 21)}
CHANNELS = 256


def _env_list(name, default):
    value = os.environ.get(name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else list(default)


def levels():
    """FPN levels to run: KDOPS_BENCH_LEVELS=P2,P3 overrides (CPU default skips P2: minutes per case)."""
    return _env_list("KDOPS_BENCH_LEVELS", FPN_LEVELS if ON_GPU else ("P3", "P4", "P5", "P6"))


def batches():
    return [int(b) for b in _env_list("KDOPS_BENCH_BATCHES", ("2", "8") if ON_GPU else ("2",))]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtypes():
    return _env_list("KDOPS_BENCH_DTYPES", DTYPES)


def implementations():
    fused = [b for b in ("cpu", "cuda", "triton") if kdops._backend.why_not(b, DEVICE) is None]
    if DEVICE.type == "cpu" and "triton" in fused:
        fused.remove("triton")  # the interpreter is a correctness tool, not a speed one
    return ["reference", "compiled", *fused]


def device_name():
    return torch.cuda.get_device_name(DEVICE) if ON_GPU else f"CPU ({os.cpu_count()} cores)"


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbps():
    """Measured device copy bandwidth (read + write bytes / time) of a 512 MiB (GPU) or 128 MiB (CPU) copy."""
    n = (512 if ON_GPU else 128) * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        _sync()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def pick(impl, reference_fn, fused_fn):
    """The callable for one implementation. fused_fn(backend) returns the kdops call for that backend."""
    if impl == "reference":
        return reference_fn
    if impl == "compiled":
        torch._dynamo.reset()  # fresh compile per case: no cross-case recompilation limits
        return torch.compile(reference_fn, dynamic=False)
    return fused_fn(impl)


def run_case(benchmark, *, op, impl, level, batch, dtype, step, inputs, bytes_moved, rounds=None, iterations=1):
    """Times step(*inputs) (forward + backward) and records what the report needs in extra_info.

    Sub-millisecond steps pass iterations > 1: each round then times that many back-to-back steps and
    reports their mean, so one interruption of a shared machine does not decide a round.
    """
    def call():
        step(*inputs)
        _sync()

    call()  # warm-up: compilation, autotuning, allocator
    peak = None
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        call()
        peak = torch.cuda.max_memory_allocated(DEVICE) - base
    benchmark.group = f"{op} {level} b{batch} {dtype}"
    benchmark.extra_info.update(op=op, impl=impl, level=level, batch=batch, dtype=dtype, device=device_name(),
                                bytes_moved=bytes_moved, peak_extra_bytes=peak,
                                copy_bandwidth_gbps=copy_bandwidth_gbps())
    if rounds is None:
        rounds = 20 if ON_GPU else 3
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["achieved_gbps"] = bytes_moved / median / 1e9 if median > 0 else None


def feature(shape, dtype, seed, requires_grad=False):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=DEVICE, dtype=DTYPES[dtype])
    return x.requires_grad_(requires_grad)
