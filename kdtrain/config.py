"""Every command's configuration: the defaults, said once here, and the checks of user input.

Training values come from the defaults < a config file (YAML or TOML) < command-line flags.
No torch here: ``--help`` reads its defaults from these dataclasses, and a wrong name or
missing file is reported before torch loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Hashable
from typing import Optional

from kdtrain.architectures import ARCHITECTURES
from kdtrain.distill.recipes import AUTO_ITERS, AUTO_RATIO, check_weights_fit, parse_recipe
from kdtrain.errors import UsageError, require_dir, require_file, require_writable_dir

# Options with a fixed set of values (the CLI's choices; config-file values are checked against them too).
CHOICES = {
    "invalid_boxes": ("error", "skip"),
    "arch": ARCHITECTURES,
    "teacher_arch": ARCHITECTURES,
    "imitation_mask": ("none", "boxes"),
    "optimizer": ("sgd", "adamw"),
    "lr_schedule": ("constant", "step", "cosine"),
    "amp": ("auto", "off", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "variant": ("standard", "label-scarce"),
    "nonfinite": ("stop", "skip"),
}
# Allowed values of numeric options: (test, what it says). Checked for flags, config files and the Python API,
# of every command (their config dataclasses below); a float must also be finite.
_POSITIVE_INT = (lambda v: v > 0, "an integer > 0")
_FRACTION = (lambda v: 0 < v <= 1, "a number in (0, 1]")
_UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
_SEED = (lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2^32 - 1]")  # numpy's seed range
RANGES = {
    "iterations": _POSITIVE_INT, "batch_size": _POSITIVE_INT, "eval_batch_size": _POSITIVE_INT,
    "log_every": _POSITIVE_INT, "checkpoint_every": _POSITIVE_INT, "threads": _POSITIVE_INT,
    "min_size": _POSITIVE_INT, "max_size": _POSITIVE_INT,
    "num_classes": (lambda v: v >= 2, "an integer >= 2 (background and one class at least)"),
    "epochs": (lambda v: v > 0, "a number > 0"),
    "workers": (lambda v: v >= 0, "an integer >= 0"),
    "lr_warmup": (lambda v: v >= 0, "an integer >= 0"),
    "distill_warmup": (lambda v: v >= 0, "an integer >= 0"),
    "distill_auto_ratio": (lambda v: v > 0, "a number > 0"),
    "distill_auto_iters": _POSITIVE_INT, "max_skipped_steps": _POSITIVE_INT,
    "pretrain_steps": (lambda v: v >= 0, "an integer >= 0 (0: backbones from random initialisation)"),
    "grad_ratio_every": (lambda v: v >= 0, "an integer >= 0 (0: measured at the start only)"),
    "aspect_ratio_group_factor": (lambda v: v >= -1, "an integer >= -1 (-1: off)"),
    "labeled_fraction": _FRACTION, "student_scale": _FRACTION,
    "hflip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "lr_gamma": (lambda v: v > 0, "a number > 0"),
    "clip_grad": (lambda v: v >= 0, "a number >= 0 (0: off)"),
    "lr_steps": (lambda v: all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v),
                 "a list of integers > 0"),
    "seed": _SEED, "labeled_subset_seed": _SEED,
    # pseudo-label, predict and two-step
    "score_threshold": _UNIT, "nms_iou": _UNIT, "merge_nms_iou": _UNIT, "max_detections": _POSITIVE_INT,
    "pseudo_score_threshold": _UNIT, "pseudo_nms_iou": _UNIT, "pseudo_max_detections": _POSITIVE_INT,
    "step1_iterations": _POSITIVE_INT, "step2_iterations": _POSITIVE_INT, "step2_lr": (lambda v: v > 0, "a number > 0"),
}
CACHE_DIR_ENV = "KDTRAIN_CACHE_DIR"
DEFAULT_ITERATIONS = 1000  # when neither iterations nor epochs is set


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
    distill_auto_ratio: float = AUTO_RATIO  # --distill-weights auto: term gradient / detection gradient
    distill_auto_iters: int = AUTO_ITERS    # --distill-weights auto: calibration iterations
    imitation_mask: str = "none"
    trust_teacher: bool = False     # run although the distillation check finds the teacher untrained or mismatched
    grad_ratio_every: int = 50      # every N iterations, each term's gradient ratio to metrics.jsonl (0: only at start)
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
    keep_checkpoints: bool = False  # else checkpoint_last.pth is deleted once model_final.pth is written
    log_every: int = 20
    nonfinite: str = "stop"         # a NaN/Inf loss or gradient: stop with its name, or skip the step (nonfinite.py)
    max_skipped_steps: int = 10     # --nonfinite skip: stop after this many bad steps in a row
    eval_batch_size: int = 4
    no_eval: bool = False
    tensorboard: bool = False
    seed: int = 0
    threads: Optional[int] = None
    device: str = "auto"
    progress: bool = True


FIELDS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(name: str, value, flag: str | None = None) -> None:
    """UsageError naming the flag, the config key and the allowed values unless RANGES[name] admits ``value``
    (a finite one). ``flag``: the flag of a command without a config file (named alone)."""
    test, allowed = RANGES[name]
    if value is None:
        return
    where = flag or f"{_flag(name)} (config key {name})"
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: must be {allowed} and finite, got {value!r}")
    if not test(value):
        raise UsageError(f"{where}: must be {allowed}, got {value!r}")


def _checked_value(path: str, name: str, value):
    """``value`` if it has the type of TrainConfig's field ``name``; floats written as 1e-4 in YAML are accepted."""
    kind = FIELDS[name]
    optional = kind.startswith("Optional[")
    kind = kind[len("Optional["):-1] if optional else kind
    if value is None and optional:
        return value
    if kind == "float" and isinstance(value, str):
        try:
            return float(value)  # PyYAML (YAML 1.1) reads 1e-4 as a string
        except ValueError:
            pass
    if isinstance(value, bool) != (kind == "bool") or not isinstance(value, _TYPES[kind]):
        raise UsageError(f"{path}: {name} must be of type {kind}, got {value!r}")
    return value


def _yaml_load_unique_keys(stream):
    """yaml.safe_load, but a key given twice in one mapping is an error (PyYAML keeps the last one silently), and so
    is an alias (*name): a config is a flat list of options, and nested aliases grow exponentially when expanded."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported in a kdtrain config; "
                                                  "write the value out", self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    break  # PyYAML's own error follows
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(stream, Loader=UniqueKeyLoader)


def _parse_config_file(path: str):
    if path.endswith(".toml"):
        import tomllib

        bad, mode, load = tomllib.TOMLDecodeError, "rb", tomllib.load
    else:
        import yaml

        bad, mode, load = yaml.YAMLError, "r", _yaml_load_unique_keys
    try:
        with open(path, mode) as f:
            data = load(f)
    except (bad, UnicodeDecodeError) as e:
        raise UsageError(f"cannot parse config file {path}: {' '.join(str(e).split())}") from None
    return {} if data is None else data  # an empty YAML file


def read_config_file(path: str) -> dict:
    """A flat mapping of TrainConfig keys (dashes or underscores) from .yaml/.yml/.toml."""
    require_file(path, "--config")
    if not path.endswith((".toml", ".yaml", ".yml")):
        raise UsageError(f"config file must end in .yaml, .yml or .toml: {path}")
    data = _parse_config_file(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option names to values")
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UsageError(f"{path}: unknown option {key!r}")
        out[name] = _checked_value(path, name, value)
    return out


def make_config(file_values: dict | None = None, cli_values: dict | None = None) -> TrainConfig:
    """Merge: dataclass defaults, then the config file, then explicit CLI flags."""
    values = {}
    values.update(file_values or {})
    values.update({k: v for k, v in (cli_values or {}).items() if k in FIELDS})
    cfg = TrainConfig(**values)
    if cfg.iterations is None and cfg.epochs is None:
        cfg.iterations = DEFAULT_ITERATIONS
    return cfg


def check_train_config(cfg: TrainConfig, need_data: bool = True) -> TrainConfig:
    """Raise UsageError for unknown names, values of the wrong type or range and missing inputs, before anything
    is built or loaded."""
    if need_data and not (cfg.train_images and cfg.train_ann):
        raise UsageError("training needs --train-images and --train-ann (flags, or keys of the --config file)")
    for name in FIELDS:  # flags and config files are typed already; a TrainConfig built in Python is not
        setattr(cfg, name, _checked_value("TrainConfig", name, getattr(cfg, name)))
    for name in [n for n in RANGES if n in FIELDS]:
        check_range(name, getattr(cfg, name))
    for name, choices in CHOICES.items():
        value = getattr(cfg, name, None)
        if value is not None and value not in choices:
            raise UsageError(f"{_flag(name)}: {value!r} is not one of: {', '.join(choices)}")
    if cfg.min_size is not None and cfg.max_size is not None and cfg.max_size < cfg.min_size:
        raise UsageError(f"--max-size {cfg.max_size} is below --min-size {cfg.min_size}: the cap on the longer "
                         "side must be at least the shorter side's size")
    check_weights_fit(cfg.recipe, cfg.distill_weights)
    require_writable_dir(cfg.output_dir, "--output-dir")
    for name in ("train_images", "val_images"):
        if getattr(cfg, name):
            require_dir(getattr(cfg, name), _flag(name))
    for name in ("train_ann", "val_ann", "teacher", "init"):
        if getattr(cfg, name):
            require_file(getattr(cfg, name), _flag(name))
    if cfg.resume not in (None, "auto"):
        require_file(cfg.resume, "--resume")
    return cfg


@dataclasses.dataclass
class PseudoLabelConfig:
    teachers: list                       # kdtrain checkpoints
    images: str                          # folder of (unlabeled) images
    output: str                          # COCO json to write
    class_maps: list = dataclasses.field(default_factory=list)  # none, one shared, or one per teacher
    categories_from: Optional[str] = None  # COCO json whose categories are the student's label space
    score_threshold: float = 0.5
    nms_iou: float = 0.5                 # per teacher, class-wise
    max_detections: int = 100            # per teacher and image
    merge_nms_iou: Optional[float] = None  # NMS over the merged boxes (off: the paper found it does not help)
    keep_empty: bool = False             # keep images no teacher found anything in (as pure background)
    batch_size: int = 4
    workers: int = 2
    progress: bool = True


@dataclasses.dataclass
class TwoStepConfig:
    base: TrainConfig                     # shared options; train_images/train_ann are the labeled data
    steps: tuple = (1, 2)
    unlabeled_images: Optional[str] = None  # step-1 images (default: the labeled images' folder)
    pseudo_ann: Optional[str] = None      # existing pseudo-labels; else the teacher writes them
    class_maps: list = dataclasses.field(default_factory=list)
    pseudo_score_threshold: float = PseudoLabelConfig.score_threshold
    pseudo_nms_iou: float = PseudoLabelConfig.nms_iou
    pseudo_max_detections: int = PseudoLabelConfig.max_detections
    step1_iterations: Optional[int] = None
    step2_iterations: Optional[int] = None
    step2_lr: Optional[float] = None
    step1_init: Optional[str] = None      # step 2 alone: the step-1 student (default OUTPUT/step1/model_final.pth)

    @staticmethod
    def step1_recipe_of(recipe: str) -> str:
        """Step 1's recipe: the one given, else the paper's feature imitation (masked by the teacher's boxes)."""
        return recipe if recipe != "none" else "imitation"


def default_cache_dir() -> str:
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kdtrain")


DEMO_OUTPUT_DIRS = {"standard": "kdtrain_demo", "label-scarce": "kdtrain_demo_label_scarce"}  # by variant


@dataclasses.dataclass
class DemoConfig:
    output_dir: Optional[str] = None  # None: DEMO_OUTPUT_DIRS[variant]
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)  # dataset and teacher, kept between runs
    image_size: int = 160
    train_images: int = 500
    val_images: int = 120
    teacher_arch: str = "fasterrcnn_resnet18_fpn"
    teacher_iterations: int = 300
    pretrain_steps: int = 150  # backbone pretraining (kdtrain/pretrain.py); 0: backbones from random init
    # Anchors sized for the 10-64 px objects of 160 px images (one size per FPN level).
    teacher_anchors: tuple = (16, 32, 64, 128, 256)
    # The student: the teacher's network from the same pretrained backbone, with about half the teacher's
    # budget, so the teacher is clearly stronger (docs/regime.md).
    student_arch: str = "fasterrcnn_resnet18_fpn"
    student_scale: float = 1.0  # < 1: a low-resolution student (Chen 2017), its input this times the teacher's
    student_anchors: tuple = (16, 32, 64, 128, 256)
    student_iterations: int = 160
    batch_size: int = 4
    lr: float = 0.02
    recipe: str = "fgd"  # the recipe that lifted the student on every seed measured (docs/efficacy.md)
    distill_weights: str | None = None
    distill_warmup: int = 40
    imitation_mask: str = "none"
    seeds: tuple = (0,)
    # label-scarce variant (kdtrain/demo/label_scarce.py)
    variant: str = "standard"  # one of CHOICES["variant"]
    labeled_fraction: float = 0.1
    step1_share: float = 0.75  # of the student budget spent on pseudo-labels (two-step)
    pseudo_score_threshold: float = PseudoLabelConfig.score_threshold
    threads: int | None = None
    workers: int = 1
    retrain_teacher: bool = False
    trust_teacher: bool = False  # as train's: distil although the distillation check finds the teacher untrained
    progress: bool = True

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = DEMO_OUTPUT_DIRS.get(self.variant, DEMO_OUTPUT_DIRS["standard"])


@dataclasses.dataclass
class VisualizeConfig:
    student: str                         # kdtrain checkpoints
    teacher: str
    images: str                          # image folder and the COCO json whose boxes are drawn and masked
    ann: str
    output_dir: str = "kdtrain_visualize"
    num_images: int = 2                  # the first images of --ann
    temperature: Optional[float] = None  # None: FGD's preset of the student's detector family
    device: str = "auto"
    threads: Optional[int] = None
    progress: bool = True

    def check(self) -> "VisualizeConfig":
        """UsageError naming the flag unless every value and path is usable."""
        if self.num_images < 1:
            raise UsageError(f"--num-images: must be an integer > 0, got {self.num_images}")
        if self.temperature is not None and not self.temperature > 0:
            raise UsageError(f"--temperature: must be a number > 0, got {self.temperature}")
        check_range("threads", self.threads, "--threads")
        require_file(self.student, "--student")
        require_file(self.teacher, "--teacher")
        require_dir(self.images, "--images")
        require_file(self.ann, "--ann")
        require_writable_dir(self.output_dir, "--output-dir")
        return self


@dataclasses.dataclass
class PlotConfig:
    run_dir: str                         # a train run's --output-dir (holds metrics.jsonl)
    output: Optional[str] = None         # None: RUN_DIR/losses.png


# The efficacy table's rows: RECIPE or RECIPE:WEIGHTS (WEIGHTS as --distill-weights, e.g. fgd:auto).
EFFICACY_RECIPES = ("none", "imitation", "imitation:auto", "fgd", "fgd:auto", "chen2017", "chen2017:auto", "cwd",
                    "cwd:auto", "pkd", "pkd:auto")


@dataclasses.dataclass
class EfficacyConfig:
    """Recipes x seeds at one budget; the data, teacher and student settings default to the demo's."""
    recipes: tuple = EFFICACY_RECIPES
    seeds: tuple = (0, 1, 2, 3, 4)  # a 95% interval of the paired gains needs a few seeds
    output_dir: str = "kdtrain_efficacy"
    iterations: int = DemoConfig.student_iterations  # of every student
    # Own COCO-format data (all four, and --teacher); unset: the demo's generated data and its cached teacher.
    train_images: Optional[str] = None
    train_ann: Optional[str] = None
    val_images: Optional[str] = None
    val_ann: Optional[str] = None
    teacher: Optional[str] = None
    image_size: int = DemoConfig.image_size        # students' min/max size (and the generated images' side)
    student_anchors: tuple = DemoConfig.student_anchors
    student_scale: float = DemoConfig.student_scale
    batch_size: int = DemoConfig.batch_size
    lr: float = DemoConfig.lr
    distill_warmup: int = DemoConfig.distill_warmup
    imitation_mask: str = DemoConfig.imitation_mask
    distill_auto_ratio: float = AUTO_RATIO
    distill_auto_iters: int = AUTO_ITERS
    trust_teacher: bool = False
    keep_models: bool = False  # else each run's model_final.pth is deleted once measured (70 MB each at demo size)
    # the built-in data and its teacher (as the demo's)
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    generated_train_images: int = DemoConfig.train_images
    generated_val_images: int = DemoConfig.val_images
    teacher_iterations: int = DemoConfig.teacher_iterations
    pretrain_steps: int = DemoConfig.pretrain_steps
    threads: Optional[int] = None
    workers: int = DemoConfig.workers
    progress: bool = True

    def demo_config(self) -> DemoConfig:
        """The demo settings whose data, teacher and student runs the efficacy table shares."""
        return DemoConfig(output_dir=self.output_dir, cache_dir=self.cache_dir, image_size=self.image_size,
                          train_images=self.generated_train_images, val_images=self.generated_val_images,
                          teacher_iterations=self.teacher_iterations, pretrain_steps=self.pretrain_steps,
                          student_anchors=tuple(self.student_anchors), student_scale=self.student_scale,
                          student_iterations=self.iterations, batch_size=self.batch_size, lr=self.lr,
                          distill_warmup=self.distill_warmup, imitation_mask=self.imitation_mask,
                          trust_teacher=self.trust_teacher,
                          seeds=tuple(self.seeds), threads=self.threads, workers=self.workers,
                          progress=self.progress)


_OWN_DATA = ("train_images", "train_ann", "val_images", "val_ann", "teacher")


def split_spec(spec: str) -> tuple[str, str | None]:
    """'fgd:auto' -> ('fgd', 'auto'); 'fgd' -> ('fgd', None) (the recipe's default weights)."""
    recipe, _, weights = spec.partition(":")
    return recipe.strip(), (weights.strip() or None)


def check_efficacy_config(b: EfficacyConfig) -> None:
    """UsageError naming the flag for a bad recipe list, seed list or data choice, before anything runs."""
    if not b.recipes:
        raise UsageError("--recipes: give at least one recipe")
    if len(set(b.recipes)) != len(b.recipes):
        raise UsageError(f"--recipes: {', '.join(b.recipes)} names a row twice")
    for spec in b.recipes:
        recipe, weights = split_spec(spec)
        try:
            terms = parse_recipe(recipe)
            check_weights_fit(recipe, weights)
        except UsageError as e:
            raise UsageError(f"--recipes: {spec!r}: {e}") from None
        if not terms and weights:
            raise UsageError(f"--recipes: {spec!r}: recipe {recipe!r} has no distillation weights to set")
    if not b.seeds or len(set(b.seeds)) != len(b.seeds):
        raise UsageError(f"--seeds: expected distinct seeds, got {b.seeds!r}")
    for seed in b.seeds:
        check_range("seed", seed, "--seeds")
    require_writable_dir(b.output_dir, "--output-dir")
    for name in ("iterations", "batch_size", "lr", "distill_warmup", "distill_auto_ratio", "distill_auto_iters",
                 "workers", "threads", "pretrain_steps", "student_scale"):
        check_range(name, getattr(b, name))
    if b.iterations <= b.distill_auto_iters:
        raise UsageError(f"--iterations must be above --distill-auto-iters ({b.distill_auto_iters}), "
                         f"got {b.iterations!r}")
    if b.imitation_mask not in CHOICES["imitation_mask"]:
        raise UsageError(f"--imitation-mask: {b.imitation_mask!r} is not one of: "
                         f"{', '.join(CHOICES['imitation_mask'])}")
    given = [name for name in _OWN_DATA if getattr(b, name)]
    if given and len(given) < len(_OWN_DATA):
        missing = ", ".join(_flag(n) for n in _OWN_DATA if n not in given)
        raise UsageError(f"own data needs all of --train-images, --train-ann, --val-images, --val-ann and --teacher "
                         f"(the built-in data uses the demo's teacher); missing: {missing}")
    for name in ("train_images", "val_images"):
        if getattr(b, name):
            require_dir(getattr(b, name), _flag(name))
    for name in ("train_ann", "val_ann", "teacher"):
        if getattr(b, name):
            require_file(getattr(b, name), _flag(name))


YOLO_RECIPES = ("fgd", "imitation", "cwd", "pkd", "mgd", "none")  # python -m kdtrain yolo --recipe


@dataclasses.dataclass
class YoloConfig:
    student: str = "yolov8n.yaml"
    teacher: Optional[str] = None
    recipe: str = "fgd"
    weight: Optional[float] = None
    data: Optional[str] = None
    epochs: int = 3
    imgsz: int = 160
    batch: int = 16
    workers: int = 0
    device: Optional[str] = None
    seed: int = 0
    output_dir: str = os.path.join("runs", "kdtrain-yolo")
    name: Optional[str] = None
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    generated_train_images: int = 600
    generated_val_images: int = 150
    generated_image_size: int = 160
