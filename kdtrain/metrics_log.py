"""Metrics as JSON lines (one object per record), optionally mirrored to TensorBoard."""

from __future__ import annotations

import json
import os

from kdtrain.errors import UsageError


class MetricsWriter:
    def __init__(self, path: str | None, tensorboard_dir: str | None = None):
        self.path = path
        self._tb = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # optional dependency
                raise UsageError("--tensorboard needs the tensorboard package (pip install tensorboard)") from e
            self._tb = SummaryWriter(tensorboard_dir)

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None and "iteration" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["iteration"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str, warn=print) -> list[dict]:
    """The records of ``path``; a torn last line (a kill mid-write) is left out with a warning."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number < len(lines):  # inside the file: not a torn write but a damaged log
                raise UsageError(f"{path}: line {number} is not a json record ({e})") from None
            warn(f"[kdtrain] warning: {path}: ignoring its torn last line {line.strip()[:60]!r}")
            continue
        if not isinstance(record, dict):
            raise UsageError(f"{path}: line {number} is not a json record (an object): {line.strip()[:60]!r}")
        records.append(record)
    return records
