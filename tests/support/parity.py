"""The parity check every op test runs: a backend's outputs and gradients against the op's float64
reference, on random inputs, odd shapes, every dtype, contiguous and strided.

An op test declares a `Parity` (how to make its inputs, call it, and compute the reference) and
calls `check(spec, backend, device, dtype, layout)` from a test parametrized by `params(...)`. Each
case's inputs come from a seed; a failure names the case and the seed, and KDOPS_TEST_SEED=<seed>
reruns the same inputs.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import pytest
import torch

from support.backends import FUSED, backend_param
from support.cuda_emu import NAME as CUDA_EMU
from support.numerics import DTYPES, acc_dtype, assert_close, non_contiguous, randn

SEED_ENV = "KDOPS_TEST_SEED"
LAYOUTS = ("contiguous", "non_contiguous")
# The interpreter and the emulator run a kernel thousands of times slower than the C++ kernels: the
# default run takes one representative dtype and layout on each (float32 contiguous on the interpreter;
# bfloat16 strided on the emulator, so the default run still runs a half dtype and strided inputs through
# kernels other than the C++ ones), the `stress` tier all the others.
SLOW_DEFAULT = {("triton", "cpu"): (torch.float32, "contiguous"), (CUDA_EMU, "cpu"): (torch.bfloat16, "non_contiguous")}
SLOW = set(SLOW_DEFAULT)


def is_stress(backend: str, device: str, dtype: torch.dtype, layout: Optional[str] = None) -> bool:
    """Whether a case is left to the stress tier: on the interpreter and the emulator, every dtype (and layout,
    for a test that has one) but the backend's representative one."""
    default = SLOW_DEFAULT.get((backend, device))
    return default is not None and (dtype != default[0] or (layout is not None and layout != default[1]))


class Case(NamedTuple):
    shape: tuple
    mode: Any   # the op's own options of this case (e.g. (margin, with_weight)), or None
    index: int  # varies what the case index varies (grad weights, a teacher that requires grad, ...)
    seed: int


@dataclass
class Parity:
    """One op's parity check.

    inputs(case, dtype, device): the public function's arguments by name; leaves that require grad
        get their gradients checked.
    run(backend, **arguments): the public function's outputs, a tuple.
    expected(**arguments): the reference's outputs from the same arguments, floating ones in float64.
    """

    inputs: Callable[..., dict]
    run: Callable[..., tuple]
    expected: Callable[..., tuple]
    shapes: Sequence[tuple]
    small_shapes: Sequence[tuple]  # for the Triton interpreter and the CUDA emulator (`small_for`)
    modes: Sequence[Any] = (None,)
    strided: Sequence[str] = ("student", "teacher")  # the arguments layout="non_contiguous" makes strided
    out_scale: Union[float, Sequence[float]] = 10.0  # atol scale of each output (sums over many elements)
    grad_scale: Union[float, dict, Callable[[dict], dict]] = 1.0  # of each gradient, by argument name
    small_for: Sequence[str] = ("triton", CUDA_EMU)
    out_dtype: Callable = acc_dtype  # the outputs' dtype for inputs of a dtype
    after_backward: Optional[Callable[[dict], None]] = None  # extra checks on the arguments' gradients


def base_seed() -> int:
    """KDOPS_TEST_SEED when set, else a fresh random seed: new inputs every run."""
    seed = os.environ.get(SEED_ENV, "").strip()
    return int(seed) if seed else int(torch.randint(0, 2**31 - 1, ()).item())


@contextlib.contextmanager
def described(what: str):
    """Adds `what` (the case and its seed) to the message of a failing assertion."""
    try:
        yield
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from error


def cases(spec: Parity, backend: str, device: str, seed: int):
    shapes = spec.small_shapes if backend in spec.small_for and device == "cpu" else spec.shapes
    pairs = [(shape, mode) for shape in shapes for mode in spec.modes]
    return [Case(tuple(shape), mode, i, seed + i) for i, (shape, mode) in enumerate(pairs)]


def params(dtypes=DTYPES + (torch.float64,), layouts=LAYOUTS, backends=FUSED):
    """(backend, device, dtype, layout) of every fused backend; on the interpreter and the emulator the
    combinations other than SLOW_DEFAULT's are marked `stress`."""
    out = []
    for backend, device in backends:
        base = backend_param(backend, device)
        for dtype in dtypes:
            for layout in layouts:
                marks = base.marks + ((pytest.mark.stress,) if is_stress(backend, device, dtype, layout) else ())
                out.append(pytest.param(backend, device, dtype, layout, marks=marks,
                                        id=f"{base.id}-{str(dtype)[6:]}-{layout}"))
    return out


def check(spec: Parity, backend: str, device: str, dtype: torch.dtype, layout: str) -> None:
    """Every case of `spec` on one backend, dtype and layout."""
    seed = base_seed()
    for case in cases(spec, backend, device, seed):
        with described(f"{backend} on {device}, {dtype}, {layout}, shape {case.shape}, mode {case.mode}, "
                       f"seed {case.seed} ({SEED_ENV}={seed} reruns these inputs)"):
            _check_case(spec, backend, device, dtype, layout, case)


def _objective(outputs, case: Case):
    """A weighted sum of every output: a gradient other than 1 on each (scalars: 0.5, 1.5 or 2.5)."""
    total = 0
    for k, o in enumerate(outputs):
        weight = 0.5 + case.index % 3 if o.dim() == 0 else randn(o.shape, torch.float64, o.device, case.seed + 10 + k)
        total = total + (o.double() * weight).sum()
    return total


def _check_case(spec, backend, device, dtype, layout, case):
    args = spec.inputs(case, dtype, device)
    if layout == "non_contiguous":
        args = {k: non_contiguous(v) if k in spec.strided and v is not None else v for k, v in args.items()}
    leaves = {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    reference_args = {k: v.detach().double().requires_grad_(v.requires_grad)
                      if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in args.items()}
    outputs = spec.run(backend, **args)
    expected = spec.expected(**reference_args)
    assert len(outputs) == len(expected)
    out_dtype = spec.out_dtype(dtype)
    for k, (actual, exp) in enumerate(zip(outputs, expected)):
        assert actual.shape == exp.shape and actual.dtype == out_dtype, (k, actual.shape, actual.dtype)
        scale = spec.out_scale if isinstance(spec.out_scale, (int, float)) else spec.out_scale[k]
        assert_close(actual, exp, out_dtype, scale=scale, msg=lambda m, k=k: f"output {k}: {m}")
    _objective(outputs, case).backward()
    _objective(expected, case).backward()
    scales = spec.grad_scale(args) if callable(spec.grad_scale) else spec.grad_scale
    for name, leaf in leaves.items():
        grad = leaf.grad
        assert grad is not None and grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        scale = scales if isinstance(scales, (int, float)) else scales.get(name, 1.0)
        assert_close(grad, reference_args[name].grad, leaf.dtype, scale=scale,
                     msg=lambda m, name=name: f"gradient of {name}: {m}")
    if spec.after_backward is not None:
        spec.after_backward(args)
