"""The forward hooks of kdops.nn.FeatureDistiller: which modules a selection names, one probe forward for
their maps' shapes, and the recorder that keeps each step's maps.

A module that runs k > 1 times in one forward (a detector head shared by the FPN levels) gives k levels, one per
call in call order, named "<level>#0" ... "<level>#k-1" (docs/math.md §10). Every forward must run each recorded
module as many times as the probe forward did; a module that runs more often raises, naming it and both counts."""

from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

Selector = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]
LevelSpec = Tuple[str, Optional[str]]  # (module path, dict key or None)
Recorded = Tuple[str, Optional[str], Optional[int]]  # (level, dict key or None, call index or None: the only call)


class _Stop(Exception):
    """Raised by a hook once every recorded module of a model has run: the rest of its forward is not needed."""


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys {list(x)}"
    return f"a {type(x).__name__}"


def _no_key(side: str, path: str, output, key: str) -> str:
    return f"FeatureDistiller: the {side}'s module {path!r} returned {_describe(output)}, which has no key {key!r}"


class Recorder:
    """The maps one model's hooks record, by level. Holds no reference to the distiller, so a dropped
    distiller can be collected (its finalizer then removes the hooks)."""

    def __init__(self, side: str, model: nn.Module):
        self.side, self.model = side, model
        self.maps: Dict[str, Tensor] = {}
        self.modules: Dict[str, List[Recorded]] = {}  # module path -> [(level, dict key, call index)]
        self.calls: Dict[str, int] = {}  # module path -> how many times it runs in one forward (the probe's count)
        self.counts: Dict[str, int] = {}  # module path -> calls in the current forward
        self.stop_after_all = False  # set while the distiller runs the model only for its maps
        self.fired: set = set()

    def probe(self, specs: List[LevelSpec], example_inputs: tuple) -> Dict[str, tuple]:
        """{level: (C, H, W)} in selection order, from one whole forward in eval mode under no_grad (a whole-dict
        selection such as "backbone" becomes one level per key, a module that runs k times k levels); fills
        `modules` and `calls`."""
        model, raw = self.model, {}
        named = dict(model.named_modules())
        paths = list(dict.fromkeys(path for path, _ in specs))

        def keep(path):
            def hook(module, args, output):
                raw.setdefault(path, []).append(output)
            return hook

        handles = [named[path].register_forward_hook(keep(path)) for path in paths]
        modes = [(m, m.training) for m in model.modules()]  # restored one by one: parts may be frozen in eval
        model.eval()  # leave BatchNorm statistics alone
        try:
            with torch.no_grad():
                model(*example_inputs)  # to the end: only then is each module's number of calls known
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
        missing = [path for path in paths if path not in raw]
        if missing:
            raise ValueError(f"FeatureDistiller: the {self.side}'s modules {missing} did not run on example_inputs")
        shapes = {}
        for path, key in specs:
            outputs = raw[path]
            self.calls[path] = len(outputs)
            for call, out in enumerate(outputs):
                keys = list(out) if key is None and isinstance(out, Mapping) else [key]
                for k in keys:
                    level = path if k is None else f"{path}:{k}" if path else k  # "" is the model itself
                    if len(outputs) > 1:
                        level = f"{level}#{call}"
                    if k is not None and not (isinstance(out, Mapping) and k in out):
                        raise ValueError(_no_key(self.side, path, out, k))
                    value = out if k is None else out[k]
                    if not isinstance(value, Tensor) or value.dim() != 4:
                        raise TypeError(f"FeatureDistiller: the {self.side}'s level {level!r} must be an (N, C, H, "
                                        f"W) tensor or a dict of them, got {_describe(value)}")
                    if level in shapes:
                        raise ValueError(f"FeatureDistiller: the {self.side}'s level {level!r} is selected twice")
                    if level == "total":
                        raise ValueError("FeatureDistiller: a level cannot be named 'total' (the key of the losses' "
                                         "sum)")
                    shapes[level] = tuple(value.shape[1:])
                    self.modules.setdefault(path, []).append((level, k, call if len(outputs) > 1 else None))
        return shapes

    def hook(self, keep: set) -> list:
        """Hooks the modules of the levels in `keep` (and forgets the others); returns the handles. A hook
        before the model's own forward starts each forward's call counts afresh."""
        kept = {path: [lv for lv in levels if lv[0] in keep] for path, levels in self.modules.items()}
        self.modules = {path: levels for path, levels in kept.items() if levels}
        named = dict(self.model.named_modules())
        handles = [self.model.register_forward_pre_hook(lambda module, args: self.counts.clear())]
        return handles + [named[path].register_forward_hook(self._record(path)) for path in self.modules]

    def _record(self, path: str):
        levels, maps, side, detach = self.modules[path], self.maps, self.side, self.side == "teacher"
        calls, counts = self.calls[path], self.counts

        def record(module, args, output):
            call = counts.get(path, 0)
            counts[path] = call + 1
            if call >= calls:
                raise RuntimeError(
                    f"FeatureDistiller: the {side}'s module {path!r} ran {call + 1} times in one forward, but "
                    f"{calls} time(s) in the probe forward that made its level(s); a module must run as often in "
                    "every forward (a module shared by k inputs gives k levels, '#0' ... '#k-1', by call order)")
            for level, key, index in levels:
                if index is not None and index != call:
                    continue
                if key is not None and not (isinstance(output, Mapping) and key in output):
                    raise ValueError(_no_key(side, path, output, key))
                value = output if key is None else output[key]
                if not isinstance(value, Tensor) or value.dim() != 4:
                    raise TypeError(f"FeatureDistiller: {side} level {level!r} must be an (N, C, H, W) tensor, "
                                    f"got {_describe(value)}")
                # The teacher is a constant of every loss.
                maps[level] = value.detach() if detach else value
            if self.stop_after_all and call + 1 == calls:
                self.fired.add(path)
                if len(self.fired) == len(self.modules):
                    raise _Stop
        return record

    def run(self, *inputs, **kwargs) -> None:
        """Run the model until every hooked module has fired, for the maps only."""
        self.fired, self.stop_after_all = set(), True
        self.counts.clear()
        try:
            self.model(*inputs, **kwargs)
        except _Stop:
            pass
        finally:
            self.stop_after_all = False

    def recorded(self, level: str, hint: str) -> Tensor:
        if level not in self.maps:
            raise RuntimeError(f"FeatureDistiller: no {self.side} map recorded for level {level!r}; {hint} before "
                               "computing the loss (the maps are dropped after each loss)")
        return self.maps[level]


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose named_modules the user means: inside DDP and torch.compile."""
    while True:
        if isinstance(model, nn.DataParallel):
            # Its replicas share the hooks and run in threads: each would overwrite the others' maps.
            raise TypeError("FeatureDistiller: nn.DataParallel is not supported; use DistributedDataParallel")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def select(model: nn.Module, layers: Selector, arg: str) -> List[LevelSpec]:
    """(module path, dict key or None) of each selected level, in order."""
    named = dict(model.named_modules())
    if callable(layers):
        specs = [(path, None) for path, module in named.items() if layers(path, module)]
        if not specs:
            raise ValueError(f"FeatureDistiller: {arg} selected no module of {type(model).__name__}")
        return specs
    names = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"FeatureDistiller: {arg} must be a module name, a list of them or a callable "
                        f"(path, module) -> bool, got {layers!r}")
    specs = []
    for name in names:
        path, _, key = name.partition(":")
        if path not in named:
            parent = path.rpartition(".")[0]
            nearby = [p for p in named if p and p.rpartition(".")[0] == parent][:12] or [p for p in named if p][:12]
            raise ValueError(f"FeatureDistiller: {arg} names {path!r}, which is no module of "
                             f"{type(model).__name__}; modules there include {nearby}")
        specs.append((path, key or None))
    return specs


def image_size(example_inputs) -> Tuple[int, int]:
    """(H, W) of the first tensor with >= 3 dims in the example inputs."""
    stack = list(example_inputs)
    while stack:
        x = stack.pop(0)
        if isinstance(x, Tensor) and x.dim() >= 3:
            return int(x.shape[-2]), int(x.shape[-1])
        if isinstance(x, (list, tuple)):
            stack = list(x) + stack
    raise ValueError("FeatureDistiller: found no image (a tensor with >= 3 dims) in the teacher's example inputs; "
                     "pass image_size=")
