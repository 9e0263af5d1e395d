"""Where a run starts: --init weights or a checkpoint to resume (checked to fit the run before anything is
applied: one line naming what differs), and the run folder made consistent.

Starting at iteration N (0 for a fresh run) drops every metrics record after N, so a restarted run
never logs an iteration twice, and removes the temporary files of a checkpoint write that was killed.
"""

from __future__ import annotations

import json
import os

from kdtrain import checkpoint as ckpt_io
from kdtrain.config import TrainConfig
from kdtrain.errors import UsageError
from kdtrain.metrics_log import read_jsonl

FINAL = "model_final.pth"
TRAINING_KEYS = ("model_state", "distill_state", "optimizer", "scheduler", "scaler", "iteration", "rng")
# Settings a resumed run must share with its checkpoint: they decide what the saved state holds.
SAME_ON_RESUME = ("arch", "recipe", "optimizer")


def resume_path(cfg: TrainConfig) -> str | None:
    if cfg.resume != "auto":
        return cfg.resume  # None, or a path check_train_config found
    path = os.path.join(cfg.output_dir, ckpt_io.LAST)
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(cfg.output_dir, FINAL)):  # its checkpoint went when it finished
        raise UsageError(f"--resume: the run in {cfg.output_dir} has finished ({FINAL}); there is nothing to "
                         "resume. Drop --resume to train it again, or use another --output-dir")
    return None


def load_training_state(path: str, total: int) -> dict:
    """The checkpoint at ``path`` if it is a training checkpoint of at most ``total`` iterations."""
    state = ckpt_io.load(path)
    if not isinstance(state, dict) or "model_state" not in state:
        raise UsageError(f"--resume: {path} is not a kdtrain checkpoint")
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise UsageError(f"--resume: {path} is an exported model, not a training checkpoint (it has no "
                         f"{', '.join(missing)}); use --init {path} to start a new run from its weights")
    iteration = state["iteration"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise UsageError(f"--resume: {path} is at iteration {iteration!r}, not a whole number >= 0: a damaged or "
                         "foreign checkpoint")
    if int(state["iteration"]) > total:
        raise UsageError(f"--resume: {path} is at iteration {state['iteration']}, beyond this run's {total} "
                         "iterations; give --iterations (or --epochs) of at least that, or use --init to start "
                         "a new run from its weights")
    if not (isinstance(state["optimizer"], dict) and {"state", "param_groups"} <= set(state["optimizer"])):
        raise UsageError(f"--resume: {path} holds no optimizer state (state and param_groups): a damaged or "
                         "foreign checkpoint; use --init to start a new run from its weights")
    return state


def _network(spec: dict) -> str:
    return f"{spec.get('arch')} with {spec.get('num_classes')} classes (background included)"


def load_weights(module, weights: dict, what: str, there: dict | None = None, here: dict | None = None) -> None:
    """Load ``weights`` into ``module``, or UsageError saying what does not fit, before anything is changed:
    the network (``there``/``here``: the checkpoint's and this run's ModelSpec dicts), else the first key or
    shape. ``what`` names the flag and the file ("--init PATH")."""
    if there and here and (there.get("arch"), there.get("num_classes")) != (here["arch"], here["num_classes"]):
        raise UsageError(f"{what}: it holds a {_network(there)}, this run's student is a {_network(here)}; give "
                         "the checkpoint's --arch and class count, or a checkpoint of this student (for another "
                         "network, --teacher distils from it)")
    mine = module.state_dict()
    missing = [k for k in mine if k not in weights and not k.endswith("num_batches_tracked")]
    extra = [k for k in weights if k not in mine and not k.endswith("num_batches_tracked")]
    shapes = [k for k in mine if k in weights and tuple(weights[k].shape) != tuple(mine[k].shape)]
    if shapes:
        k = shapes[0]
        raise UsageError(f"{what}: its weights do not fit: {k} is {list(weights[k].shape)} there, "
                         f"{list(mine[k].shape)} here (other --model-arg values, e.g. anchor_sizes?)")
    if missing or extra:
        raise UsageError(f"{what}: its weights do not fit: " + "; ".join(
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra)) if keys))
    module.load_state_dict(weights, strict=False)


def restore(state: dict, path: str, cfg: TrainConfig, spec: dict, distiller, optimizer, scheduler, scaler,
            log=print) -> int:
    """Apply a training checkpoint (load_training_state's) to this run's objects; returns its iteration.
    UsageError naming the setting or the state that does not fit, before the loop starts."""
    saved = state.get("config") or {}
    for name in SAME_ON_RESUME:
        if name in saved and saved[name] != getattr(cfg, name):
            raise UsageError(f"--resume: {path} was written by a run with --{name} {saved[name]}, this run has "
                             f"--{name} {getattr(cfg, name)}; resume with the same --{name}, or use --init to start "
                             "a new run from its weights")
    load_weights(distiller.student, state["model_state"], f"--resume {path}", state.get("model_spec"), spec)
    load_weights(distiller.terms, state["distill_state"], f"--resume {path} (distillation terms)")
    if distiller.auto is not None:
        distiller.auto.load_state_dict(state.get("auto_weights"))
        if distiller.auto.calibrated:
            log("[kdtrain] automatic distillation weights from the checkpoint: "
                + ", ".join(f"{k}={w:.4g}" for k, w in distiller.auto.weights.items()))
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        try:
            target.load_state_dict(state[name])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise UsageError(f"--resume: {path}: its {name} state does not fit this run ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); a damaged checkpoint, or one of "
                             "other settings") from None
    ckpt_io.set_rng_state(state["rng"])
    return int(state["iteration"])


def _logged_before(record: dict, iteration: int) -> bool:
    """Whether a record was written before the checkpoint at ``iteration``: a train or skipped-step record of
    that iteration was, an evaluation of it (run after the checkpoint) was not."""
    at = record.get("iteration", 0)
    return at < iteration or (at == iteration and record.get("kind") in ("train", "skipped"))


def restart_metrics(path: str, iteration: int, warn=print) -> None:
    """Drop the records logged after ``iteration`` (they will be redone); all of them for a fresh start."""
    if not os.path.isfile(path):
        return
    keep = [r for r in read_jsonl(path, warn) if _logged_before(r, iteration)]
    with open(path + ".tmp", "w") as f:
        for r in keep:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)
