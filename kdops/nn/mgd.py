"""MGD: masked generative distillation (Yang et al. 2022) as one module per feature level (docs/math.md §13)."""

import contextlib
import math
from typing import Optional

import torch
from torch import Tensor, nn

from kdops.ops.feature_imitation import feature_imitation

# Official (alpha, lambda_) per detector family (github yzd-v/MGD det/configs), docs/math.md §13.
PRESETS = {
    "two_stage": dict(alpha=5e-7, lambda_=0.45),
    "one_stage": dict(alpha=2e-5, lambda_=0.65),
}

SEED_RANGE = 2**63  # a seed is stored in an int64 tensor
_U64 = 2**64 - 1


def _splitmix64(*values: int) -> int:
    """One well-spread 64-bit generator seed from the values (splitmix64 over each in turn)."""
    x = 0
    for v in values:
        x = (x + v + 0x9E3779B97F4A7C15) & _U64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
        x ^= x >> 31
    return x


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def check_lambda(lambda_, where: str) -> float:
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not 0 <= lambda_ < 1:
        raise ValueError(f"{where}: lambda_ (the drop probability of a pixel) must be a number in [0, 1), "
                         f"got {lambda_!r}")
    return float(lambda_)


class RandomPixelMask(nn.Module):
    """MGD's random mask: each pixel is kept with probability 1 - `drop`, one mask for all channels.

    Draw k of a mask uses a torch.Generator on the features' device seeded from (seed, k, the process's
    rank in a distributed run), so the sequence depends on nothing but this module's state (seed, draws):
    its extra state in `state_dict()` (an int64 CPU tensor [seed, draws]). Saving and loading it continues
    the sequence exactly (a resumed run draws the masks the uninterrupted run would). On CUDA the draw is
    `torch.rand` on the device: no host sync.

    seed: an int in [0, 2**63); None draws one from torch's global generator, so `torch.manual_seed` (a
    run's seed) fixes it.
    """

    def __init__(self, drop: float, seed: Optional[int] = None):
        super().__init__()
        self.drop = check_lambda(drop, "RandomPixelMask")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_RANGE:
            raise ValueError(f"RandomPixelMask: seed must be an int in [0, 2**63) or None, got {seed!r}")
        self.seed, self.draws = seed, 0
        self._generators: dict = {}
        _compile_eager_draw()

    def forward(self, n: int, h: int, w: int, device) -> Tensor:
        """A (n, h, w) bool mask, True where a pixel is kept."""
        return _eager_draw(self, n, h, w, device)

    def draw(self, n: int, h: int, w: int, device) -> Tensor:
        """forward's draw (called outside any torch.compile trace)."""
        device = torch.device(device)
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        generator.manual_seed(_splitmix64(self.seed, self.draws, _rank()))
        self.draws += 1
        # The official rule: keep where u <= 1 - lambda, u ~ U[0, 1) in float32.
        return torch.rand((n, h, w), generator=generator, device=device) <= 1 - self.drop

    def get_extra_state(self) -> Tensor:
        return torch.tensor([self.seed, self.draws], dtype=torch.int64)

    def set_extra_state(self, state) -> None:
        if not (isinstance(state, Tensor) and state.dtype == torch.int64 and state.shape == (2,)
                and 0 <= int(state[0]) and 0 <= int(state[1])):
            raise ValueError(f"RandomPixelMask: a saved mask state is an int64 tensor [seed, draws] of two numbers "
                             f">= 0, got {state!r}")
        self.seed, self.draws = int(state[0]), int(state[1])

    def extra_repr(self) -> str:
        return f"drop={self.drop}, seed={self.seed}, draws={self.draws}"


@contextlib.contextmanager
def fork_masks(*modules: nn.Module):
    """Every RandomPixelMask in `modules` draws as if nothing inside the block had drawn (its state is put
    back on exit), as torch.random.fork_rng does for torch's global generator: for a forward that must not
    change a run's numbers (a check before training, a measurement)."""
    masks = [m for module in modules for m in module.modules() if isinstance(m, RandomPixelMask)]
    saved = [(m.seed, m.draws) for m in masks]
    try:
        yield
    finally:
        for m, (seed, draws) in zip(masks, saved):
            m.seed, m.draws = seed, draws


_eager_draw = None


def _compile_eager_draw() -> None:
    """RandomPixelMask.draw run eagerly under torch.compile: a generator is not traceable, and a traced draw
    would guard on the draw count (a recompile per step). Made when the first mask module is built, so that
    `import kdops` does not load torch._dynamo."""
    global _eager_draw
    if _eager_draw is None:
        _eager_draw = torch.compiler.disable(RandomPixelMask.draw)


class MGDLoss(nn.Module):
    """L = alpha * Σ (G(M) - T)^2 / N on one feature level, M the student feature with random pixels
    dropped, G the generation block (MGD, Yang et al. 2022; docs/math.md §13).

    forward(student, teacher, keep=None):
        student: (N, C_s, H, W); teacher: (N, C_t, H, W) (detached here: a constant of the loss, cast to the
        generated map's dtype). keep: optional (N, H, W) bool mask of the kept pixels, on the features'
        device; None draws one (`masks`, each pixel dropped with probability lambda_).
    Returns the 0-dim loss (float32, float64 for float64 features).

    The student goes through `align` (a 1x1 conv, only when the channel counts differ, as in the
    official code), then its dropped pixels are set to 0 and `generation` (3x3 conv, ReLU, 3x3 conv,
    C_t -> C_t) regenerates the teacher's whole map. The squared-error sum / N is
    kdops.feature_imitation(normalize="batch"), the fused op of every backend. A dropped pixel's student
    values reach neither the loss nor any gradient, NaN and Inf included (selects, not products).

    Args:
        student_channels, teacher_channels: channel counts of the two features.
        alpha: the loss weight (>= 0); lambda_: the drop probability of a pixel, in [0, 1). See `preset`
            for the official values; the defaults are the one-stage ones.
        seed: the mask generator's seed (RandomPixelMask); None takes one from torch's global generator.
        backend: kdops backend of the squared-error op, None for automatic.
    """

    def __init__(self, student_channels: int, teacher_channels: int, alpha: float = 2e-5, lambda_: float = 0.65,
                 seed: Optional[int] = None, backend: Optional[str] = None):
        super().__init__()
        for name, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MGDLoss: {name} must be an int >= 1, got {value!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"MGDLoss: alpha (the loss weight) must be a finite number >= 0, got {alpha!r}")
        check_lambda(lambda_, "MGDLoss")
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.align = (nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
                      if student_channels != teacher_channels else None)
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1))
        self.masks = RandomPixelMask(lambda_, seed)
        self.alpha = float(alpha)
        self.backend = backend

    @property
    def lambda_(self) -> float:
        return self.masks.drop

    @classmethod
    def preset(cls, family: str, student_channels: int, teacher_channels: int, **kwargs) -> "MGDLoss":
        """MGDLoss with the official hyper-parameters of `family`: "two_stage" (Faster R-CNN and friends) or
        "one_stage" (RetinaNet, RepPoints; kdtrain also uses it for FCOS, SSD and YOLO). Extra keyword
        arguments override them."""
        if family not in PRESETS:
            raise ValueError(f"MGDLoss.preset: family must be one of {tuple(PRESETS)}, got {family!r}")
        return cls(student_channels, teacher_channels, **{**PRESETS[family], **kwargs})

    def forward(self, student: Tensor, teacher: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        self._check(student, teacher, keep)
        n, _, h, w = student.shape
        if keep is None:
            keep = self.masks(n, h, w, student.device)
        keep = keep.unsqueeze(1)
        masked = torch.where(keep, student, 0)  # zeroed before align too: its weight gradient reads the input
        if self.align is not None:
            masked = torch.where(keep, self.align(masked), 0)
        generated = self.generation(masked)
        teacher = teacher.detach()
        if teacher.dtype != generated.dtype:  # e.g. a float32 teacher and an autocast student
            teacher = teacher.to(generated.dtype)
        return self.alpha * feature_imitation(generated, teacher, normalize="batch", backend=self.backend)

    def _check(self, student, teacher, keep) -> None:
        for name, x, channels in (("student", student, self.student_channels),
                                  ("teacher", teacher, self.teacher_channels)):
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"MGDLoss: {name} must be an (N, {channels}, H, W) tensor ({name}_channels="
                                 f"{channels}), got {got}")
        if (student.shape[0], *student.shape[2:]) != (teacher.shape[0], *teacher.shape[2:]):
            raise ValueError(f"MGDLoss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have "
                             "the same N, H and W (resize the student first)")
        if teacher.device != student.device:
            raise ValueError(f"MGDLoss: teacher is on {teacher.device} but the student on {student.device}")
        if keep is not None:
            expected = (student.shape[0], *student.shape[2:])
            if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != expected \
                    or keep.device != student.device:
                got = (f"{keep.dtype} {tuple(keep.shape)} on {keep.device}" if isinstance(keep, Tensor)
                       else type(keep).__name__)
                raise ValueError(f"MGDLoss: keep must be a bool tensor of shape (N, H, W) = {expected} on "
                                 f"{student.device}, got {got}")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lambda_={self.lambda_}"
