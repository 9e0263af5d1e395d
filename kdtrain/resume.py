"""Where a run starts: a checkpoint to resume (checked before it is applied), and the run folder made consistent.

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
    if int(state["iteration"]) > total:
        raise UsageError(f"--resume: {path} is at iteration {state['iteration']}, beyond this run's {total} "
                         "iterations; give --iterations (or --epochs) of at least that, or use --init to start "
                         "a new run from its weights")
    return state


def _logged_before(record: dict, iteration: int) -> bool:
    """Whether a record was written before the checkpoint at ``iteration``: a train record of that iteration
    was, an evaluation of it (run after the checkpoint) was not."""
    at = record.get("iteration", 0)
    return at < iteration or (at == iteration and record.get("kind") == "train")


def restart_metrics(path: str, iteration: int, warn=print) -> None:
    """Drop the records logged after ``iteration`` (they will be redone); all of them for a fresh start."""
    if not os.path.isfile(path):
        return
    keep = [r for r in read_jsonl(path, warn) if _logged_before(r, iteration)]
    with open(path + ".tmp", "w") as f:
        for r in keep:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)
