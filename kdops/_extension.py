"""Loads the native extension (kdops._C) once; kdops keeps working without it."""

import os
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which kdops._C links against)

_C = None
load_error = None

if os.environ.get("KDOPS_NO_EXTENSION", "").strip() in ("1", "true", "yes"):
    load_error = "disabled by KDOPS_NO_EXTENSION=1"
else:
    try:
        from kdops import _C  # noqa: F811  (registers torch.ops.kdops.* as a side effect)
    except ImportError as exc:  # not built, or built against another torch
        load_error = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            "kdops: the native kernels are not built, so the 'cpu' and 'cuda' backends are unavailable and "
            "CPU tensors use the pure-PyTorch 'reference' backend. Build them from the repository root with "
            "`pip install --no-build-isolation -e .` (a C++ compiler, ninja and, for the CUDA kernels, a CUDA "
            f"toolkit with CUDA_HOME set). Cause: {load_error}",
            RuntimeWarning,
            stacklevel=2,
        )


def native_loaded() -> bool:
    return _C is not None


# The ops the loaded kdops._C implements, read once here: a plain set that torch.compile can trace through.
_NATIVE_OPS = frozenset() if _C is None else frozenset(
    name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
    if name.startswith("kdops::") and torch._C._dispatch_has_kernel(name))


def has_native_op(name: str) -> bool:
    """Whether the loaded kdops._C defines kdops::<name> (a build older than the Python sources may not)."""
    return name in _NATIVE_OPS


STALE_BUILD = "kdops._C was built from older sources and lacks kdops::{op}; rebuild: pip install --no-build-isolation -e ."


def cuda_kernels_built() -> bool:
    return _C is not None and bool(_C.built_with_cuda())
