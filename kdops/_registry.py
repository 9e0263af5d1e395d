"""Each op's interface, declared once (an `Op`), and the torch.library plumbing derived from it.

Every op exists twice in the dispatcher: the native op `kdops::<op>` (C++ schema in csrc/ops/, CPU and
CUDA kernels, autograd in csrc/autograd/) and the Triton op `kdops_triton::<op>` (a Python custom op,
device-agnostic so the Triton interpreter can run it on CPU tensors). From an op module's `Op` come the
Triton op and its backward (kernels: kdops/triton/<op>.py `forward`, `backward`), the fakes of both
namespaces, and the Triton op's autograd: setup_context saves what `saved` names, and the backward is
the op's own, the Python twin of csrc/autograd/<op>.cpp. tests/test_registry.py holds every declared
schema to the C++ one.
"""

import contextlib
import importlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional, Tuple

import torch

from kdops import _checks, _extension
from kdops._backend import BACKENDS
from kdops._layout import acc_dtype


def _names(qualname: str, schema: str):
    parsed = torch._C.parse_schema(qualname + schema)
    tensors = tuple(a.name for a in parsed.arguments if "Tensor" in str(a.type))
    return tuple(a.name for a in parsed.arguments), tuple(r.name for r in parsed.returns), tensors


@dataclass(frozen=True)
class Op:
    """One op's interface.

    schema: "(Tensor student, ...) -> (Tensor loss, ...)", the argument and output names in schema order.
    fake(a): the outputs' shapes and dtypes from the arguments by name (a.student, a.tau, ...).
    reference: the "reference" backend, called with the arguments by name.
    saved: the arguments and outputs the backward reads, by name; non-tensor arguments are always kept.
    backward(call, s, grads, need): the gradients {argument: tensor} of the arguments in the set `need`,
        from s (what was kept, by name) and grads (the outputs' gradients by name, None if unused).
        call(**given) runs the backward op, each of its arguments taken from `given` or else from s.
    fake_backward(a): the backward's outputs; default, one gradient shaped like a.student.
    backends: the backends with a kernel (kdops._backend.resolve's `supported`).
    """

    name: str
    schema: str
    fake: Callable
    reference: Callable
    backward_schema: Optional[str] = None
    saved: Tuple[str, ...] = ()
    backward: Optional[Callable] = None
    fake_backward: Optional[Callable] = None
    non_differentiable: Tuple[str, ...] = ()
    backends: Tuple[str, ...] = BACKENDS

    def __post_init__(self):
        args, outputs, _ = _names("kdops::" + self.name, self.schema)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "outputs", outputs)

    def __call__(self, backend: str, **arguments) -> tuple:
        """The op's outputs on `backend` (the reference's may be fewer: what it computes)."""
        if backend == "reference":
            out = self.reference(**arguments)
            return out if isinstance(out, tuple) else (out,)
        namespace = torch.ops.kdops_triton if backend == "triton" else torch.ops.kdops
        return getattr(namespace, self.name)(*(arguments[n] for n in self.args))


def define(op: Op) -> Op:
    """Creates the Triton op (and its backward) of `op`, and registers fakes and autograd for both namespaces."""
    kernels = _Kernels(op.name)
    torch.library.custom_op(f"kdops_triton::{op.name}", kernels.forward, mutates_args=(), schema=op.schema)
    if op.backward_schema is not None:
        torch.library.custom_op(f"kdops_triton::{op.name}_backward", kernels.backward, mutates_args=(),
                                schema=op.backward_schema)
    for namespace in ("kdops", "kdops_triton"):
        if namespace == "kdops" and not _extension.native_loaded():
            continue  # the native ops do not exist then
        qualname = f"{namespace}::{op.name}"
        register_fake(qualname, _by_name(op.args, op.fake))
        if op.backward_schema is None:
            continue  # no autograd: the outputs are constants (box_masks)
        backward_args = _names(qualname + "_backward", op.backward_schema)[0]
        register_fake(qualname + "_backward", _by_name(backward_args, op.fake_backward or _gradient_like_student))
        if namespace == "kdops_triton":  # the native op's autograd is C++: csrc/autograd/<op>.cpp
            backward_op = getattr(torch.ops.kdops_triton, op.name + "_backward")
            torch.library.register_autograd(qualname, _autograd_backward(op, backward_op),
                                            setup_context=_setup_context(op))
    return op


class _Kernels:
    """kdops/triton/<op>.py, imported on first use (so `import kdops` does not import Triton)."""

    def __init__(self, name: str):
        self.name, self.module = name, None

    def _kernels(self):
        if self.module is None:
            self.module = importlib.import_module(f"kdops.triton.{self.name}")
        return self.module

    def forward(self, *args):
        with device_of(args):
            return self._kernels().forward(*args)

    def backward(self, *args):
        with device_of(args):
            return self._kernels().backward(*args)


def device_of(args):
    """The first CUDA tensor's device made current (a no-op context on CPU tensors).

    Triton launches on the current device and its current stream: with tensors on cuda:1 while cuda:0
    is current, a launch without this guard would run on the wrong GPU and stream.
    """
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_cuda:
            return torch.cuda.device(a.device)
    return contextlib.nullcontext()


def teacher_gets_no_gradient(op: str, teacher_arg: str = "teacher"):
    """The backward of a loss that differentiates only the student: dL/dstudent from the loss' gradient."""
    def backward(call, s, grads, need):
        _checks.no_grad_needed("teacher" in need, op, teacher_arg)
        return {"student": call(grad=grads.loss)}
    return backward


def acc_empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised tensor of `shape` in like's accumulation dtype, on like's device: what fakes return."""
    return like.new_empty(shape, dtype=acc_dtype(like.dtype))


def _by_name(names, fn):
    """fn(a) called as the op is: positional arguments in schema order, or by name."""
    return lambda *args, **kwargs: fn(SimpleNamespace(**dict(zip(names, args)), **kwargs))


def _gradient_like_student(a):
    return torch.empty_like(a.student, memory_format=torch.contiguous_format)


def _setup_context(op: Op):
    tensors = set(_names("kdops::" + op.name, op.schema)[2])

    def setup_context(ctx, inputs, output):
        values = dict(zip(op.args, inputs))
        values.update(zip(op.outputs, output))
        ctx.save_for_backward(*(values[n] for n in op.saved))
        ctx.kept = {n: v for n, v in zip(op.args, inputs) if n not in tensors}
        if op.non_differentiable:
            ctx.mark_non_differentiable(*(values[n] for n in op.non_differentiable))
    return setup_context


def _autograd_backward(op: Op, backward_op):
    backward_args = _names("kdops::backward", op.backward_schema)[0]

    def backward(ctx, *grads):
        s = SimpleNamespace(**dict(zip(op.saved, ctx.saved_tensors)), **ctx.kept)

        def call(**given):
            return backward_op(*(given[n] if n in given else getattr(s, n) for n in backward_args))

        need = {n for n, needed in zip(op.args, ctx.needs_input_grad) if needed}
        result = op.backward(call, s, SimpleNamespace(**dict(zip(op.outputs, grads))), need) if need else {}
        return tuple(result.get(n) if n in need else None for n in op.args)
    return backward


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

