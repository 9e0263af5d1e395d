"""The files `kdtrain yolo` hands to ultralytics, checked first, so that none can run code or crash it.

Ultralytics unpickles a checkpoint (.pt) with full trust unless its restricted loading is on: a
checkpoint is first loaded here the restricted way (``weights_only`` with ultralytics' own allow-list of
its and torch's model classes), and refused with kdtrain's one checkpoint line when its pickle asks
for anything else; ``import_ultralytics`` also turns ultralytics' restricted loading on for the
process (ULTRALYTICS_SAFE_LOAD). A YAML file (data.yaml, a model yaml) must be plain YAML: ultralytics
reads it with PyYAML's safe loader, which crashes on a ``!!python/object`` tag; here that is one line.
"""

from __future__ import annotations

import os
import pickle

import torch

from kdtrain import checkpoint as ckpt_io
from kdtrain.errors import UsageError, one_line
from kdtrain.yolo.offline import import_ultralytics

ULTRALYTICS_HOLDS = "tensors, numbers, strings, containers and the torch and ultralytics model classes it allows"


def _allowed_names() -> set:
    """Names of the globals registered for weights_only loading (ultralytics registers what it allows)."""
    names = set()
    for entry in torch.serialization.get_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        names.add(name or f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return names


def check_checkpoint(path: str, what: str) -> None:
    """UsageError unless ``path`` is an ultralytics checkpoint that loads the restricted way (nothing runs)."""
    import_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    try:
        torch_safe_load(path, safe_only=True)
    except Exception as e:  # TypeError for a foreign type or a damaged file, ModuleNotFoundError, ...
        if isinstance(e.__cause__, pickle.UnpicklingError) or isinstance(e, pickle.UnpicklingError):
            unsafe = ckpt_io.unsafe_globals(path, allowed=_allowed_names())
            if unsafe:
                raise ckpt_io.refused(path, unsafe, writer="ultralytics", holds=ULTRALYTICS_HOLDS) from None
        raise UsageError(f"{what}: cannot read ultralytics checkpoint {path} ({one_line(e)})") from None


def check_yaml(path: str, what: str) -> None:
    """UsageError unless ``path`` reads as plain YAML (no Python tags)."""
    import yaml

    try:
        with open(path) as f:
            yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{what}: {path} is not plain YAML ({' '.join(str(e).split())}); Python tags such as "
                         "!!python/object are refused") from None


def check_files(files: dict) -> None:
    """Check every local .pt and YAML file of ``files`` ({what: path, or None, or a module})."""
    for what, path in files.items():
        if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
            continue  # a module, None, or a name ultralytics resolves itself (yolov8n.yaml)
        if str(path).endswith(".pt"):
            check_checkpoint(str(path), what)
        elif str(path).endswith((".yaml", ".yml")):
            check_yaml(str(path), what)
