"""Training configuration: defaults < config file (YAML or TOML) < command-line flags."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional


@dataclasses.dataclass
class TrainConfig:
    # data
    train_images: Optional[str] = None
    train_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    invalid_boxes: str = "error"
    category_ids_as_labels: bool = False
    hflip: float = 0.5
    aspect_ratio_group_factor: int = 3
    workers: int = 2
    labeled_fraction: float = 1.0   # train on this fraction of the training images (label-scarce runs)
    labeled_subset_seed: int = 0    # which fraction: fixed apart from --seed so runs share one subset
    # student model
    arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn"
    num_classes: Optional[int] = None
    weights: Optional[str] = None
    weights_backbone: Optional[str] = None
    init: Optional[str] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    # teacher and distillation
    teacher: Optional[str] = None
    teacher_arch: Optional[str] = None
    teacher_weights: Optional[str] = None
    recipe: str = "none"
    distill_weights: Optional[str] = None
    distill_warmup: int = 0
    imitation_mask: str = "none"
    student_scale: float = 1.0      # low-resolution student (Chen 2017): its input is the teacher's x this
    # optimisation
    iterations: Optional[int] = None
    epochs: Optional[float] = None
    batch_size: int = 2
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    lr_warmup: int = 100
    lr_steps: list = dataclasses.field(default_factory=list)
    lr_gamma: float = 0.1
    clip_grad: float = 10.0
    amp: str = "auto"
    # run
    output_dir: str = "runs/kdtrain"
    resume: Optional[str] = None
    checkpoint_every: int = 500
    log_every: int = 20
    eval_batch_size: int = 4
    no_eval: bool = False
    tensorboard: bool = False
    seed: int = 0
    threads: Optional[int] = None
    device: str = "auto"
    progress: bool = True


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_config_file(path: str) -> dict:
    """A flat mapping of TrainConfig keys (dashes or underscores) from .yaml/.yml/.toml."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    elif path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as e:
            raise RuntimeError("YAML config files need pyyaml (pip install pyyaml), or use TOML") from e
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    else:
        raise ValueError(f"config file must end in .yaml, .yml or .toml: {path}")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ValueError(f"{path}: unknown option {key!r}")
        out[name] = value
    return out


def make_config(file_values: dict | None = None, cli_values: dict | None = None) -> TrainConfig:
    """Merge: dataclass defaults, then the config file, then explicit CLI flags."""
    values = {}
    values.update(file_values or {})
    values.update({k: v for k, v in (cli_values or {}).items() if k in FIELDS})
    cfg = TrainConfig(**values)
    if cfg.iterations is None and cfg.epochs is None:
        cfg.iterations = 1000
    return cfg
