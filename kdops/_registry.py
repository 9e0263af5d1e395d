"""Each op's interface, declared once (an `Op`), and the torch.library plumbing derived from it.

Every op exists twice in the dispatcher: the native op `kdops::<op>` (C++ schema in csrc/ops/, CPU and
CUDA kernels, autograd in csrc/autograd/) and the Triton op `kdops_triton::<op>` (a Python custom op,
device-agnostic so the Triton interpreter can run it on CPU tensors). From an op module's `Op` come the
Triton op and its backward (kernels: kdops/triton/<op>.py `forward`, `backward`), the fakes of both
namespaces, and the Triton op's autograd: setup_context saves what `saved` names, and the backward is
the op's own, the Python twin of csrc/autograd/<op>.cpp. tests/native/test_registry.py holds every
declared schema, and the order of `saved`, to the C++ ones.
"""

import contextlib
import importlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple

import torch

from kdops import _backend, _checks, _extension
from kdops._layout import acc_dtype


class BackwardInputs(NamedTuple):
    """What an op's backward gets; it returns {argument: gradient} for the arguments in `need`."""
    saved: SimpleNamespace  # the arguments and outputs `Op.saved` names, and every non-tensor argument
    grads: SimpleNamespace  # each output's gradient by name; None for an output the loss did not use
    need: FrozenSet[str]    # the arguments whose gradient is wanted
    run: Callable           # run(**given): the backward op, each argument from `given`, else from `saved`


def _parse(qualname: str, schema: str) -> torch._C.FunctionSchema:
    return torch._C.parse_schema(qualname + schema)


@dataclass
class Op:
    """One op's interface.

    schema: "(Tensor student, ...) -> (Tensor loss, ...)", the argument and output names in schema order.
    fake(a): the outputs' shapes and dtypes from the arguments by name (a.student, a.tau, ...).
    reference: the "reference" backend, called with the arguments by name.
    backward_schema: the backward op's: the output gradients, then the saved tensors in `saved`'s order.
    saved: the arguments and outputs the backward reads, by name; non-tensor arguments are always kept.
    backward(b: BackwardInputs): the gradients {argument: tensor} of the arguments in b.need.
    fake_backward(a): the backward's outputs; default, one gradient shaped like a.student.
    non_differentiable: outputs that carry no gradient (saved statistics).
    """

    name: str
    schema: str
    fake: Callable
    reference: Callable
    backward_schema: Optional[str] = None
    saved: Tuple[str, ...] = ()
    backward: Optional[Callable[[BackwardInputs], dict]] = None
    fake_backward: Optional[Callable] = None
    non_differentiable: Tuple[str, ...] = ()
    args: Tuple[str, ...] = field(init=False)  # the argument names, in schema order
    tensor_args: Tuple[str, ...] = field(init=False)  # those of type Tensor or Tensor?
    outputs: Tuple[str, ...] = field(init=False)
    backward_args: Tuple[str, ...] = field(init=False)

    def __post_init__(self):
        parsed = _parse("kdops::" + self.name, self.schema)
        self.args = tuple(a.name for a in parsed.arguments)
        self.tensor_args = tuple(a.name for a in parsed.arguments
                                 if a.type.isSubtypeOf(torch._C.OptionalType.ofTensor()))
        self.outputs = tuple(r.name for r in parsed.returns)
        self.backward_args = () if self.backward_schema is None else tuple(
            a.name for a in _parse("kdops::backward", self.backward_schema).arguments)

    def __call__(self, backend: str, **arguments) -> tuple:
        """The op's outputs on `backend` (the reference's may be fewer: what it computes)."""
        if backend == "reference":
            out = self.reference(**arguments)
            return out if isinstance(out, tuple) else (out,)
        _checks.plain_autograd(self.name, arguments.values())
        op = getattr(getattr(torch.ops, _backend.namespace(backend)), self.name)
        return op(*(arguments[n] for n in self.args))


OPS: Dict[str, Op] = {}  # every defined op by name


def define(op: Op) -> Op:
    """Creates the Triton op (and its backward) of `op`, and registers fakes and autograd for both namespaces."""
    kernels = _Kernels(op.name)
    torch.library.custom_op(f"kdops_triton::{op.name}", kernels.forward, mutates_args=(), schema=op.schema)
    if op.backward_schema is not None:
        torch.library.custom_op(f"kdops_triton::{op.name}_backward", kernels.backward, mutates_args=(),
                                schema=op.backward_schema)
    for namespace in ("kdops", "kdops_triton"):
        if namespace == "kdops" and not _extension.has_native_op(op.name):
            continue  # no native extension, or one built before this op existed: its native backends say why
        qualname = f"{namespace}::{op.name}"
        register_fake(qualname, _by_name(op.args, op.fake))
        if op.backward_schema is None:
            continue  # no autograd: the outputs are constants (box_masks)
        register_fake(qualname + "_backward", _by_name(op.backward_args, op.fake_backward or _gradient_like_student))
        if namespace == "kdops_triton":  # the native op's autograd is C++: csrc/autograd/<op>.cpp
            register_autograd(op, namespace)
    OPS[op.name] = op
    return op


def register_autograd(op: Op, namespace: str, lib: Optional[torch.library.Library] = None) -> None:
    """`namespace::<op>`'s autograd: the op's Python backward, through `namespace::<op>_backward`."""
    backward_op = getattr(getattr(torch.ops, namespace), op.name + "_backward")

    def setup_context(ctx, inputs, output):
        values = dict(zip(op.args, inputs))
        values.update(zip(op.outputs, output))
        ctx.save_for_backward(*(values[n] for n in op.saved))
        ctx.kept = {n: v for n, v in zip(op.args, inputs) if n not in op.tensor_args}
        if op.non_differentiable:
            ctx.mark_non_differentiable(*(values[n] for n in op.non_differentiable))

    def backward(ctx, *grads):
        saved = SimpleNamespace(**dict(zip(op.saved, ctx.saved_tensors)), **ctx.kept)

        def run(**given):
            return backward_op(*(given[n] if n in given else getattr(saved, n) for n in op.backward_args))

        need = frozenset(n for n, needed in zip(op.args, ctx.needs_input_grad) if needed)
        if not need:
            return (None,) * len(op.args)
        result = op.backward(BackwardInputs(saved, SimpleNamespace(**dict(zip(op.outputs, grads))), need, run))
        result = _checks.first_order(op.name, result, (*ctx.saved_tensors, *grads))
        return tuple(result.get(n) if n in need else None for n in op.args)

    torch.library.register_autograd(f"{namespace}::{op.name}", backward, setup_context=setup_context, lib=lib)


def register_test_backend(name: str, namespace: str,
                          why_not: Callable[[str, torch.device], Optional[str]]) -> torch.library.Library:
    """Adds a backend for tests (e.g. tests' CUDA emulator): backend=name runs torch.ops.<namespace>.<op>.

    Defines every op and its backward in `namespace` from their declarations, each op with its Python
    autograd; the caller registers the kernels (e.g. torch.ops.load_library of a library with
    TORCH_LIBRARY_IMPL(<namespace>, CPU, m)) and keeps the returned library alive. why_not(op, device)
    is None when the backend can run `op` on `device` (it may build the kernels first), else the reason.
    The backend is never chosen automatically.
    """
    lib = torch.library.Library(namespace, "DEF")
    for op in OPS.values():
        lib.define(op.name + op.schema)
        if op.backward_schema is not None:
            lib.define(op.name + "_backward" + op.backward_schema)
            register_autograd(op, namespace, lib)
    _backend.add_test_backend(name, _backend.TestBackend(namespace, why_not))
    return lib


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
    def backward(b: BackwardInputs) -> dict:
        _checks.no_grad_needed("teacher" in b.need, op, teacher_arg)
        return {"student": b.run(grad=b.grads.loss)}
    return backward


def acc_empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised tensor of `shape` in like's accumulation dtype, on like's device: what fakes return."""
    return like.new_empty(shape, dtype=acc_dtype(like.dtype))


def _by_name(names, fn):
    """fn(a) called as the op is: positional arguments in schema order, or by name."""
    return lambda *args, **kwargs: fn(SimpleNamespace(**dict(zip(names, args)), **kwargs))


def _gradient_like_student(a):
    return torch.empty_like(a.student, memory_format=torch.contiguous_format)


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
