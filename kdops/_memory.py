"""The CPU kernels' cache of freed gradient buffers (csrc/cpu/gradient_buffer.h).

Full-size CPU gradients of 8 MB and more reuse the memory of freed ones of the same size, so a
training loop does not fault in fresh pages every step. The cache holds only memory no tensor uses
any more, at most KDOPS_CPU_GRADIENT_CACHE_MB (default 1024, read once, at the first large gradient;
0 turns it off). These buffers bypass torch's CPU allocator: torch.profiler's memory view misses them.
"""

import torch

from kdops import _extension


def empty_cpu_gradient_cache() -> int:
    """Frees the cached CPU gradient buffers (e.g. after training); returns the bytes released."""
    return int(torch.ops.kdops.empty_cpu_gradient_cache()) if _extension.native_loaded() else 0


def cpu_gradient_cache_bytes() -> int:
    """Bytes of freed CPU gradient buffers the cache holds now, waiting for reuse."""
    return int(torch.ops.kdops.cpu_gradient_cache_bytes()) if _extension.native_loaded() else 0
