"""torch.library plumbing shared by every op: fake (meta) kernels and hand-written autograd.

Every op exists twice in the dispatcher: the native op `kdops::<op>` (C++ schema in csrc/ops/, CPU and
CUDA kernels) and the Triton op `kdops_triton::<op>` (a Python custom op, device-agnostic so the Triton
interpreter can run it on CPU tensors). Both get the same fake kernels and the same autograd formula,
parameterised by the backward op they call.
"""

import torch

from kdops import _extension


def register(forward: str, backward: str, fake_forward, fake_backward, setup_context, make_backward) -> None:
    """Registers fakes for `forward` and `backward` and autograd for `forward`.

    make_backward(backward_op) returns the autograd backward function that calls `backward_op`.
    Native ops are skipped when the extension is not loaded (they do not exist then).
    """
    if forward.startswith("kdops::") and not _extension.native_loaded():
        return
    torch.library.register_fake(forward)(fake_forward)
    torch.library.register_fake(backward)(fake_backward)
    namespace, name = backward.split("::")
    backward_op = getattr(getattr(torch.ops, namespace), name)
    torch.library.register_autograd(forward, make_backward(backward_op), setup_context=setup_context)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / output dtype of the reductions: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def call(backend: str, name: str, reference_fn, *args):
    """Runs op `name` on the chosen backend."""
    if backend == "reference":
        return reference_fn(*args)
    namespace = torch.ops.kdops_triton if backend == "triton" else torch.ops.kdops
    return getattr(namespace, name)(*args)
