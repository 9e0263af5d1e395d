"""Which fused GPU backend `backend=None` picks for CUDA tensors, per op.

The table comes from the benchmarks (benchmarks/gpu_run.sh writes `preferred.json` beside its
results; copy the winners here). An op missing from the table, or a table never measured on a
GPU, falls back to the CUDA kernels, which have no JIT warm-up cost.
"""

# Measured on: nothing yet (no GPU was available when these ops were written).
PREFERRED_GPU_BACKEND: dict[str, str] = {}

DEFAULT_GPU_BACKEND = "cuda"
