"""torch.library plumbing shared by every op: fake (meta) kernels and hand-written autograd.

Every op exists twice in the dispatcher: the native op `kdops::<op>` (C++ schema in csrc/ops/, CPU and
CUDA kernels, autograd in csrc/autograd/) and the Triton op `kdops_triton::<op>` (a Python custom op,
device-agnostic so the Triton interpreter can run it on CPU tensors). Both get the same fake kernels;
the Triton op gets its autograd here, from the Python twin of the C++ backward.
"""

import torch

from kdops import _extension


def register(forward: str, backward: str, fake_forward, fake_backward, setup_context, make_backward) -> None:
    """Registers fakes for `forward` and `backward`, and autograd for `forward` unless it has C++ autograd.

    make_backward(backward_op) returns the autograd backward function that calls `backward_op`.
    Native ops are skipped when the extension is not loaded (they do not exist then).
    """
    native = forward.startswith("kdops::")
    if native and not _extension.native_loaded():
        return
    register_fake(forward, fake_forward)
    register_fake(backward, fake_backward)
    if native:
        return  # its autograd is C++: csrc/autograd/<op>.cpp
    namespace, name = backward.split("::")
    backward_op = getattr(getattr(torch.ops, namespace), name)
    torch.library.register_autograd(forward, make_backward(backward_op), setup_context=setup_context)


_META_LIBS = {}  # namespace -> the library fragment that holds the device-checked Meta kernels


def register_fake(qualname: str, fake) -> None:
    """Registers `fake` as the FakeTensor rule of `qualname`, and as its Meta kernel behind a device check.

    register_fake alone also serves the Meta key with `fake`, and the dispatcher picks the Meta key as
    soon as one argument is a meta tensor: a raw call mixing meta and CPU tensors would get `fake`'s
    uninitialised CPU tensors back. The Meta kernel therefore first requires every tensor to be on meta.
    """
    torch.library.register_fake(qualname)(fake)
    namespace, name = qualname.split("::")
    schema = getattr(getattr(torch.ops, namespace), name).default._schema
    names = [a.name for a in schema.arguments]
    op = name[: -len("_backward")] if name.endswith("_backward") else name

    def meta(*args, **kwargs):
        tensors = []
        for n, v in (*zip(names, args), *kwargs.items()):
            items = [(f"{n}[{i}]", x) for i, x in enumerate(v)] if isinstance(v, (list, tuple)) else [(n, v)]
            tensors += [(n, x) for n, x in items if isinstance(x, torch.Tensor)]
        first = next(n for n, v in tensors if v.device.type == "meta")
        for n, v in tensors:
            if v.device.type != "meta":
                raise RuntimeError(f"kdops.{op}: {n} is on {v.device} but {first} is on meta; all tensors must be "
                                   "on one device")
        return fake(*args, **kwargs)

    if namespace not in _META_LIBS:
        _META_LIBS[namespace] = torch.library.Library(namespace, "IMPL")
    _META_LIBS[namespace].impl(name, meta, "Meta", allow_override=True)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / output dtype of the reductions: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def call(backend: str, name: str, reference_fn, *args):
    """Runs op `name` on the chosen backend."""
    if backend == "reference":
        return reference_fn(*args)
    namespace = torch.ops.kdops_triton if backend == "triton" else torch.ops.kdops
    return getattr(namespace, name)(*args)
