"""Argument checks shared by every public op. Each error names the op, the argument and what was expected."""

import torch
import torch.autograd.forward_ad as forward_ad

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(x, op: str, arg: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"kdops.{op}: {arg} must be a torch.Tensor, got {type(x).__name__}")
    return x


def float_tensor(x, op: str, arg: str) -> torch.Tensor:
    tensor(x, op, arg)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"kdops.{op}: {arg} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def feature(x, op: str, arg: str) -> torch.Tensor:
    """A (N, C, H, W) floating feature map."""
    float_tensor(x, op, arg)
    if x.dim() != 4:
        raise ValueError(f"kdops.{op}: {arg} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    return x


def same_layout(a, b, op: str, a_name: str, b_name: str) -> None:
    """Same shape, dtype and device."""
    if a.shape != b.shape:
        raise ValueError(f"kdops.{op}: {a_name} and {b_name} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"kdops.{op}: {a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"kdops.{op}: {a_name} and {b_name} must be on the same device, "
                         f"got {a.device} and {b.device}")


def choice(value, choices, op: str, arg: str):
    if value not in choices:
        raise ValueError(f"kdops.{op}: {arg} must be one of {tuple(choices)}, got {value!r}")
    return value


def positive(value, op: str, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"kdops.{op}: {arg} must be a number > 0, got {value!r}")
    return float(value)


# Every temperature argument (attention_masks, fgd_focal_loss, fgd_feature_pass, soft_cross_entropy,
# soft_binary_cross_entropy, cwd_loss, ld_loss): a finite number >= MIN_TEMPERATURE. Below it, 1/T and the T^2 of a
# KL leave float32's range and the value turns NaN (docs/math.md §0). csrc/include/kdops/common.h: kMinTemperature.
MIN_TEMPERATURE = 1e-30


def temperature(value, op: str, arg: str = "temperature") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_TEMPERATURE <= value < float("inf"):
        raise ValueError(f"kdops.{op}: {arg} must be a finite number >= {MIN_TEMPERATURE:g} (below it 1/{arg} leaves "
                         f"float32's range), got {value!r}")
    return float(value)


def pixel_map(mask, like: torch.Tensor, op: str, arg: str, dtype=None) -> torch.Tensor:
    """An (N, H, W) weight map for the (N, C, H, W) tensor `like`, returned in `dtype` (default: like's dtype).

    The map is treated as a constant weight: it must not require grad.
    """
    tensor(mask, op, arg)
    n, _, h, w = like.shape
    if mask.shape != (n, h, w):
        raise ValueError(f"kdops.{op}: {arg} must have shape (N, H, W) = {(n, h, w)}, got {tuple(mask.shape)}")
    if mask.dtype not in FLOAT_DTYPES and mask.dtype != torch.bool:
        raise TypeError(f"kdops.{op}: {arg} must be a floating or bool tensor, got {mask.dtype}")
    if mask.device != like.device:
        raise ValueError(f"kdops.{op}: {arg} must be on {like.device} like the features, got {mask.device}")
    if mask.requires_grad:
        raise ValueError(f"kdops.{op}: {arg} is a constant weight map and must not require grad; pass {arg}.detach()")
    return mask.to(like.dtype if dtype is None else dtype)


def unit_interval(value, op: str, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"kdops.{op}: {arg} must be a number in [0, 1], got {value!r}")
    return float(value)


def number(value, op: str, arg: str) -> float:
    """A finite real number (int or float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ValueError(f"kdops.{op}: {arg} must be a finite number, got {value!r}")
    return float(value)


def integer(value, op: str, arg: str) -> int:
    """An int that fits the ops' int64 argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"kdops.{op}: {arg} must be an int, got {value!r}")
    if not -2**63 <= value < 2**63:
        raise ValueError(f"kdops.{op}: {arg} must be an int in [-2**63, 2**63), got {value!r}")
    return value


def no_grad_message(op: str, arg: str, why: str = "") -> str:
    """The error for an input that requires grad but gets none (one wording with C++ check_no_grad)."""
    return f"kdops.{op}: {arg} must not require grad, as {arg} gets no gradient{why}; pass {arg}.detach()"


FGD_TEACHER_WHY = " (its attention masks are constants of the FGD loss, as in the official code)"


def detached(x, op: str, arg: str, why: str = "") -> torch.Tensor:
    """An input the op does not differentiate with respect to."""
    if x.requires_grad:
        raise ValueError(no_grad_message(op, arg, why))
    return x


def no_grad_needed(needed: bool, op: str, arg: str, why: str = "") -> None:
    """In a backward: `arg` must not need a gradient (a raw op call skips the public checks)."""
    if needed:
        raise RuntimeError(no_grad_message(op, arg, why))


def weight_vector(w, length: int, like: torch.Tensor, dtype: torch.dtype, op: str, arg: str) -> torch.Tensor:
    """A constant (length,) floating weight vector on like's device, returned in `dtype`."""
    float_tensor(w, op, arg)
    if w.shape != (length,):
        raise ValueError(f"kdops.{op}: {arg} must have shape ({length},), got {tuple(w.shape)}")
    if w.device != like.device:
        raise ValueError(f"kdops.{op}: {arg} must be on {like.device}, got {w.device}")
    detached(w, op, arg)
    return w if w.dtype == dtype else w.to(dtype)  # .to() costs ~2 us even when it is a no-op


def labels(y, shape, like: torch.Tensor, op: str, arg: str) -> torch.Tensor:
    """An integer label tensor of `shape` on like's device, returned as int64."""
    tensor(y, op, arg)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"kdops.{op}: {arg} must be an integer tensor of class labels, got {y.dtype}")
    if tuple(y.shape) != tuple(shape):
        raise ValueError(f"kdops.{op}: {arg} must have shape {tuple(shape)}, got {tuple(y.shape)}")
    if y.device != like.device:
        raise ValueError(f"kdops.{op}: {arg} must be on {like.device}, got {y.device}")
    return y if y.dtype == torch.int64 else y.to(torch.int64)


def gc_conv(weight, bias, feat: torch.Tensor, dtype: torch.dtype, op: str, arg: str):
    """The C -> 1 1x1 conv of a GcBlock on feat's C channels: weight of any shape with C elements,
    bias with one element or None (zero). Returned as (C,) and (1,) tensors in `dtype`."""
    c = feat.shape[1]
    float_tensor(weight, op, f"{arg}weight")
    if weight.numel() != c:
        raise ValueError(f"kdops.{op}: {arg}weight must have C = {c} elements, got shape {tuple(weight.shape)}")
    if weight.device != feat.device:
        raise ValueError(f"kdops.{op}: {arg}weight must be on {feat.device} like feat, got {weight.device}")
    if bias is None:
        bias = torch.zeros(1, dtype=dtype, device=feat.device)
    float_tensor(bias, op, f"{arg}bias")
    if bias.numel() != 1 or bias.device != feat.device:
        raise ValueError(f"kdops.{op}: {arg}bias must have one element on {feat.device}, got shape "
                         f"{tuple(bias.shape)} on {bias.device}")
    return weight.reshape(c).to(dtype), bias.reshape(1).to(dtype)


# What the fused backends' autograd supports: a first-order backward for torch.autograd, and torch.func.vmap
# (PyTorch's per-sample fallback). One wording with csrc/autograd/autograd.h double_backward_message and
# func_transform_message; the reference backend is plain PyTorch and supports everything.
def double_backward_message(op: str) -> str:
    return (f"kdops.{op}: double backward (differentiating a gradient taken with create_graph=True) is not supported "
            "by the fused backends, which have a first-order backward only; use backend='reference' for "
            "higher-order gradients")


def func_transform_message(op: str) -> str:
    return (f"kdops.{op}: torch.func transforms that differentiate (grad, vjp, jvp, jacrev, jacfwd, hessian) and "
            "forward-mode AD are not supported by the fused backends, which have a first-order backward for "
            "torch.autograd only (torch.func.vmap works); use backend='reference' for them")


def first_order(op: str, gradients: dict, sources) -> dict:
    """In a fused op's autograd backward: its gradients {argument: tensor or None}, made to raise
    double_backward_message when something differentiates them; `sources` are what they depend on (the saved
    tensors and the incoming gradients), so that torch.autograd.grad(..., inputs) reaches the error.

    Under create_graph=True the backward runs with grad mode on and the kernels' backward ops have no autograd:
    without this, differentiating their output fails with an error that names an internal op (or, for the
    C++ autograd, gives a silent zero). A first derivative taken with create_graph=True still works."""
    if not torch.is_grad_enabled():
        return gradients
    sources = [t for t in sources if isinstance(t, torch.Tensor) and t.requires_grad]
    names = [n for n, g in gradients.items() if g is not None]
    if not sources or not names:
        return gradients
    wrapped = torch._C._functions.DelayedError(double_backward_message(op), len(names) + len(sources))(
        *(gradients[n].detach() for n in names), *sources)
    return {**gradients, **dict(zip(names, wrapped))}


def plain_autograd(op: str, tensors) -> None:
    """Before a fused op runs: raises func_transform_message under a torch.func transform that differentiates
    (grad, vjp, jvp, jacrev, jacfwd, hessian) or forward-mode AD with a dual input, where the fused ops would
    fail with an obscure message or, for forward mode on Triton, give a silent zero tangent. torch.func.vmap
    alone is fine. Skipped while torch.compile traces (it handles its own graphs)."""
    if torch.compiler.is_compiling():
        return
    transforms = torch._C._functorch.get_interpreter_stack()  # None outside torch.func (the common case)
    differentiating = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)
    if transforms is not None and any(t.key() in differentiating for t in transforms):
        raise RuntimeError(func_transform_message(op))
    if forward_ad._current_level >= 0 and any(
            isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError(func_transform_message(op))
