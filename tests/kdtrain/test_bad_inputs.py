"""docs/bad_inputs.md lists exactly the cases below, and each behaves as the table says.

One list: a row added here must be added to the doc (and the other way round). The checks run the
same code the commands run, at the level where it is quick; tests named in the last column of
docs/bad_inputs.md drive the full command.
"""

import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from kdtrain import checkpoint as ckpt_io
from kdtrain.cli import main
from kdtrain.config import PlotConfig, TrainConfig, check_train_config, read_config_file
from kdtrain.commands.plot import plot_run
from kdtrain.data.coco import CocoDetection
from kdtrain.data.image_check import check_images
from kdtrain.data.images import read_image
from kdtrain.engine import epochs_to_iterations, train
from kdtrain.errors import RunStopped, UsageError
from kdtrain.commands.eval import checkpoint_label_map
from kdtrain.metrics_log import read_jsonl
from kdtrain.model_args import check_model_args
from kdtrain.models import ModelSpec, build_detector, check_weights_name
from kdtrain.resume import load_training_state, load_weights, restart_metrics, restore
from kdtrain.yolo.offline import missing_ultralytics

from kdtrain_testutil import REPO, STUDENT, TEACHER

DOC = os.path.join(REPO, "docs", "bad_inputs.md")


def _json(tiny_data, tmp_path, edit, split="train"):
    data = json.load(open(tiny_data[split]["ann"]))
    edit(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


def _dataset(edit, **kw):
    def run(tiny_data, tmp_path):
        return CocoDetection(tiny_data["train"]["images"], _json(tiny_data, tmp_path, edit), **kw)
    return run


def _set(key, index, field, value):
    return lambda d: d[key][index].__setitem__(field, value)


def _refused(run, message):
    def check(tiny_data, tmp_path):
        with pytest.raises(UsageError, match=message):
            run(tiny_data, tmp_path)
    return check


def _disk_full_checkpoint_write(tiny_data, tmp_path):
    """A checkpoint write that fails on a full disk says so (torch.save's own error does not) and leaves the previous
    checkpoint intact."""
    path = tmp_path / ckpt_io.LAST
    ckpt_io.atomic_save({"iteration": 1}, str(path))
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    real_save, real_usage = torch.save, ckpt_io.shutil.disk_usage
    torch.save, ckpt_io.shutil.disk_usage = full, lambda folder: real_usage(folder)._replace(free=4096)
    try:
        with pytest.raises(RunStopped, match=r"cannot write a checkpoint in .*: the disk is full \(0.0 MiB free; "
                                             r"RuntimeError: \[enforce fail.*The previous checkpoint is intact"):
            ckpt_io.atomic_save({"iteration": 2}, str(path))
    finally:
        torch.save, ckpt_io.shutil.disk_usage = real_save, real_usage
    assert path.read_bytes() == before and os.listdir(tmp_path) == [ckpt_io.LAST]  # no temporary file left


def _box_outside(tiny_data, tmp_path):
    edit = _set("annotations", 0, "bbox", [80, 10, 5, 5])
    _refused(_dataset(edit), "box entirely outside its 64x64 image")(tiny_data, tmp_path)
    assert _dataset(edit, invalid_boxes="skip")(tiny_data, tmp_path).skipped_annotations == 1


def _degenerate_box(tiny_data, tmp_path):
    edit = _set("annotations", 0, "bbox", [10, 10, 0, 5])
    _refused(_dataset(edit), "degenerate box")(tiny_data, tmp_path)
    assert _dataset(edit, invalid_boxes="skip")(tiny_data, tmp_path).skipped_annotations == 1


def _eval_set(edit):
    def run(tiny_data, tmp_path):
        dataset = CocoDetection(tiny_data["val"]["images"], _json(tiny_data, tmp_path, edit, "val"))
        categories = json.load(open(tiny_data["train"]["ann"]))["categories"]
        return checkpoint_label_map({"label_to_cat_id": {i: i for i in range(1, 6)}, "categories": categories},
                                    "model.pth", dataset)
    return run


def _missing_category(tiny_data, tmp_path):
    def drop(d):
        d["categories"] = d["categories"][1:]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] != 1]
    assert _eval_set(drop)(tiny_data, tmp_path) == {i: i for i in range(1, 6)}


def _image_file(content):
    def run(tiny_data, tmp_path):
        src = os.path.join(tiny_data["val"]["images"], "000000.png")
        path = tmp_path / "000000.png"
        path.write_bytes(content(open(src, "rb").read()))
        check_images([str(path)], progress=False, cache_dir=str(tmp_path / "cache"))
    return run


def _metrics(text):
    def run(tiny_data, tmp_path):
        (tmp_path / "m.jsonl").write_text(text)
        return read_jsonl(str(tmp_path / "m.jsonl"), warn=lambda m: None)
    return run


def _torn_last_line(tiny_data, tmp_path):
    assert _metrics('{"iteration": 1}\n{"itera')(tiny_data, tmp_path) == [{"iteration": 1}]


def _torn_checkpoint_write(tiny_data, tmp_path):
    (tmp_path / ".tmp_abc.pth").write_bytes(b"half")
    assert ckpt_io.remove_torn_writes(str(tmp_path)) == [".tmp_abc.pth"] and not os.listdir(tmp_path)


def _restart_before_first_checkpoint(tiny_data, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"kind": "train", "iteration": 1}\n{"kind": "train", "iteration": 2}\n')
    restart_metrics(str(tmp_path / "m.jsonl"), 0)
    assert read_jsonl(str(tmp_path / "m.jsonl")) == []


def _checkpoint(iteration, exported=False, optimizer=None):
    def run(tiny_data, tmp_path):
        state = {"model_spec": {}, "model_state": {}, "iteration": iteration}
        if not exported:
            state.update(distill_state={}, optimizer={} if optimizer is None else optimizer, scheduler={}, scaler={},
                         rng={})
        ckpt_io.atomic_save(state, str(tmp_path / "c.pth"))
        load_training_state(str(tmp_path / "c.pth"), 3)
    return run


def _all(*checks):
    def run(tiny_data, tmp_path):
        for check in checks:
            check(tiny_data, tmp_path)
    return run


def _weights_from(there: dict, here: dict, module=None, weights=None):
    """--init/--resume of a checkpoint of the network ``there`` into this run's ``here`` (ModelSpec dicts)."""
    module = module or torch.nn.Linear(2, 2)
    return lambda t, p: load_weights(module, module.state_dict() if weights is None else weights, "--init c.pth",
                                     there, here)


def _resume_from(**saved):
    """--resume of a checkpoint whose run had the settings ``saved``, into a default TrainConfig run."""
    return lambda t, p: restore({"config": {**{"arch": STUDENT, "recipe": "none", "optimizer": "sgd"}, **saved}},
                                "c.pth", TrainConfig(), {}, None, None, None, None)


def _command(*args, file_arg=None):
    """A command through the CLI with --debug (the UsageError raises); ``file_arg``: an existing file it names."""
    def run(tiny_data, tmp_path):
        images, ann = tiny_data["val"]["images"], tiny_data["val"]["ann"]
        fill = {"IMAGES": images, "ANN": ann, "TMP": str(tmp_path)}
        (tmp_path / "a_file").write_text("x")
        main(["--debug", *(fill.get(a, a.replace("TMP", str(tmp_path))) for a in args)])
    return run


_EVAL = ("eval", "--checkpoint", "ANN", "--images", "IMAGES", "--ann", "ANN")
_PREDICT = ("predict", "--checkpoint", "ANN", "--images", "IMAGES", "--output", "TMP/p.json")
_PSEUDO = ("pseudo-label", "--teacher", "ANN", "--images", "IMAGES", "--output", "TMP/pl.json")


def _each_command(extra, message):
    """``extra`` flags refused with ``message`` by eval, predict and pseudo-label."""
    def check(tiny_data, tmp_path):
        for command in (_EVAL, _PREDICT, _PSEUDO):
            _refused(_command(*command, *extra), message)(tiny_data, tmp_path)
    return check


def _outputs(tiny_data, tmp_path):
    """--output of eval, predict, pseudo-label and plot; --output-dir of train: a folder/file, under a file."""
    (tmp_path / "a_file").write_text("x")
    for command in (_EVAL, _PREDICT, _PSEUDO):
        _refused(_command(*command, "--output", "TMP"), "--output: .* is a folder; give a file name")(
            tiny_data, tmp_path)
        _refused(_command(*command, "--output", "TMP/a_file/out.json"),
                 "--output: .*out.json is under .*a_file, which is a file")(tiny_data, tmp_path)
    _refused(_config(output_dir=str(tmp_path / "a_file")), "--output-dir: .*a_file is a file; give a folder")(
        tiny_data, tmp_path)
    _refused(_config(output_dir=str(tmp_path / "a_file" / "run")), "is under .*a_file, which is a file")(
        tiny_data, tmp_path)


def _unwritable(tiny_data, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real(path, mode))
    _refused(_config(output_dir=str(locked / "run")), f"--output-dir: .* cannot be written: no permission to write "
                                                      f"in {locked}")(tiny_data, tmp_path)
    _refused(_command(*_PREDICT[:-1], str(locked / "p.json")), "--output: .* cannot be written")(tiny_data, tmp_path)


def _num_classes_below_labels(tiny_data, tmp_path):
    cfg = TrainConfig(train_images=tiny_data["train"]["images"], train_ann=tiny_data["train"]["ann"], num_classes=3,
                      output_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(UsageError, match="--num-classes 3: the labels of .* go up to 5, so at least 6 classes"):
        train(cfg)
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def _anchor_sizes(tiny_data, tmp_path):
    spec = ModelSpec(TEACHER, 6, min_size=64, max_size=64, kwargs={"anchor_sizes": [16]})
    _refused(lambda t, p: build_detector(spec), rf"anchor_sizes=\[16\]: {TEACHER} has 5 feature levels; give one "
                                                r"size per level")(tiny_data, tmp_path)
    spec = ModelSpec(STUDENT, 6, kwargs={"anchor_sizes": [16, 32, 64]})
    _refused(lambda t, p: build_detector(spec), f"anchor_sizes is not supported for {STUDENT}: torchvision's "
                                                "builder sets its own anchors")(tiny_data, tmp_path)


def _drop(key):
    def edit(d):
        d["annotations"][0].pop(key)
    return edit


def _scored_json_without(tiny_data, tmp_path):
    for key in ("area", "iscrowd", "id"):
        run = lambda t, p: CocoDetection(t["val"]["images"], _json(t, p, _drop(key), "val"), scoring=True)  # noqa
        _refused(run, rf"annotations\[0\].*missing key '{key}', which COCO scoring reads")(tiny_data, tmp_path)


def _plot(lines, output=None):
    def run(tiny_data, tmp_path):
        (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        plot_run(PlotConfig(str(tmp_path), output and str(tmp_path / output)))
    return run


def _ids_as_labels(tiny_data, tmp_path):
    for cat_id in (0, -2):
        def zero_id(d, cat_id=cat_id):
            d["categories"][0]["id"] = cat_id
            for a in d["annotations"]:
                a["category_id"] = cat_id if a["category_id"] == 1 else a["category_id"]
        run = _dataset(zero_id, category_ids_as_labels=True)
        _refused(run, f"category id {cat_id} cannot be a label with --category-ids-as-labels")(tiny_data, tmp_path)


def _cache_keeps_size_and_mtime(tiny_data, tmp_path):
    """A file replaced by other bytes of the same size, its mtime put back (cp -p, rsync -t): decoded again."""
    path = tmp_path / "000000.png"
    path.write_bytes(open(os.path.join(tiny_data["val"]["images"], "000000.png"), "rb").read())
    check_images([str(path)], progress=False, cache_dir=str(tmp_path / "cache"))
    stat = os.stat(path)
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _refused(lambda t, p: check_images([str(path)], progress=False, cache_dir=str(tmp_path / "cache")),
             "cannot read image .*000000.png")(tiny_data, tmp_path)


def _image(array, name):
    def run(tiny_data, tmp_path):
        Image.fromarray(array).save(tmp_path / name)
        return read_image(str(tmp_path / name))
    return run


_GREY16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
_FLOAT = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)


def _grey16(tiny_data, tmp_path):
    image = _image(_GREY16, "g.png")(tiny_data, tmp_path)
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[2])
    torch.testing.assert_close(image[0], torch.from_numpy(_GREY16.astype(np.float32)) / 65535)


def _float_tiff(tiny_data, tmp_path):
    image = _image(_FLOAT, "f.tif")(tiny_data, tmp_path)
    torch.testing.assert_close(image[1], torch.from_numpy(_FLOAT))
    _refused(_image(_FLOAT * 255, "f255.tif"), r"a float image with values in \[0, 255\], not \[0, 1\]")(
        tiny_data, tmp_path)
    _refused(lambda t, p: check_images([str(tmp_path / "f255.tif")], progress=False, cache_dir=str(tmp_path / "c")),
             r"f255.tif \(a float image with values in \[0, 255\]")(tiny_data, tmp_path)


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _yolo_payload(tiny_data, tmp_path):
    """The check the yolo command runs on --teacher and --student (both through the CLI: test_yolo.py)."""
    if missing_ultralytics():
        pytest.skip(missing_ultralytics())
    from kdtrain.yolo.safe_files import check_files

    torch.save({"model": None, "notes": _Payload(tmp_path / "ran")}, tmp_path / "evil.pt")
    _refused(lambda t, p: check_files({"--student": str(tmp_path / "evil.pt")}),
             "refused to load checkpoint .*evil.pt: it holds builtins.exec")(tiny_data, tmp_path)
    assert not (tmp_path / "ran").exists()


def _yolo_yaml(tiny_data, tmp_path):
    if missing_ultralytics():
        pytest.skip(missing_ultralytics())
    from kdtrain.yolo.safe_files import check_files

    (tmp_path / "data.yaml").write_text("names: !!python/object/apply:os.system ['echo ran']\n")
    _refused(lambda t, p: check_files({"--data": str(tmp_path / "data.yaml")}),
             "--data: .*data.yaml is not plain YAML .*python/object/apply:os.system")(tiny_data, tmp_path)


def _config(**values):
    return lambda tiny_data, tmp_path: check_train_config(TrainConfig(**values), need_data=False)


def _each_positive(tiny_data, tmp_path):
    for key in ("batch_size", "log_every", "checkpoint_every"):
        flag = "--" + key.replace("_", "-")
        _refused(_config(**{key: 0}), rf"{flag} \(config key {key}\): must be an integer > 0")(tiny_data, tmp_path)


def _config_file(text):
    def run(tiny_data, tmp_path):
        (tmp_path / "c.yaml").write_text(text)
        read_config_file(str(tmp_path / "c.yaml"))
    return run


# (input, behaviour, check): the rows of docs/bad_inputs.md, in order.
CASES = [
    ("COCO json: two images with the same `id`", "error naming the id and both entries",
     _refused(_dataset(_set("images", 1, "id", 1)), r"duplicate image id 1 \(also .*images\[0\]\)")),
    ("COCO json: two annotations with the same `id`", "error naming the id and both entries",
     _refused(_dataset(_set("annotations", 1, "id", 1)), "duplicate annotation id 1")),
    ("COCO json: two categories with the same `id`", "error naming the id and both entries",
     _refused(_dataset(_set("categories", 1, "id", 1)), "duplicate category id 1")),
    ("COCO json: `category_id` 1.7", "error naming the annotation and the field",
     _refused(_dataset(_set("annotations", 0, "category_id", 1.7)),
              r"annotations\[0\].*'category_id' must be an integer, got 1.7")),
    ("COCO json: `image_id` \"3\" (not an integer)", "error naming the annotation and the field",
     _refused(_dataset(_set("annotations", 0, "image_id", "3")), r"'image_id' must be an integer, got '3'")),
    ("COCO json: an annotation that is not an object", "error naming its index",
     _refused(_dataset(lambda d: d["annotations"].insert(0, 7)), r"annotations\[0\] must be an object, got 7")),
    ("COCO json: a bbox entirely outside its image",
     "error naming the annotation and image; dropped (counted) with `--invalid-boxes skip`", _box_outside),
    ("COCO json: a bbox with width or height <= 0",
     "error naming the annotation and image; dropped (counted) with `--invalid-boxes skip`", _degenerate_box),
    ("`eval` json: a category the checkpoint does not have (id or name)",
     "error naming the categories, the checkpoint's and the file",
     _refused(_eval_set(_set("categories", 0, "name", "green")), "categories 1:green are not among")),
    ("`eval` json: a category of the checkpoint missing", "scored with the checkpoint's label map",
     _missing_category),
    ("image truncated after its header (train, val, eval, pseudo-label)",
     "error naming the file before the run starts (all images decoded once, cached)",
     _refused(_image_file(lambda b: b[:len(b) // 3]), r"000000.png \(OSError")),
    ("image file that is not an image", "error naming the file before the run starts",
     _refused(_image_file(lambda b: b"not a png"), "cannot read image .*000000.png")),
    ("metrics.jsonl: torn last line", "ignored with a warning on resume", _torn_last_line),
    ("metrics.jsonl: damaged line before the last", "error naming the file and line",
     _refused(_metrics('{"a": 1}\n{"b\n{"c": 3}\n'), "line 2 is not a json record")),
    ("`.tmp_*.pth` left by a kill during a checkpoint write", "removed on the next start", _torn_checkpoint_write),
    ("a checkpoint write on a full disk", "stops with one line saying the disk is full; the previous checkpoint "
     "is intact", _disk_full_checkpoint_write),
    ("run killed before its first checkpoint, started again",
     "starts fresh: the old metrics records are dropped, none doubled", _restart_before_first_checkpoint),
    ("`--resume` of a checkpoint beyond the new `--iterations`", "error naming both iteration counts",
     _refused(_checkpoint(10), "at iteration 10, beyond this run's 3 iterations")),
    ("`--resume model_final.pth` (an exported model)", "error saying to use `--init`",
     _refused(_checkpoint(1, exported=True), "exported model.*use --init")),
    ("`iterations` <= 0", "error naming flag, key and range", _refused(_config(iterations=0), "--iterations")),
    ("`batch_size`, `log_every`, `checkpoint_every` <= 0", "error naming flag, key and range",
     _each_positive),
    ("config file `checkpoint_every: often`", "error naming the key and the type",
     _refused(_config_file("checkpoint_every: often\n"), "checkpoint_every must be of type int, got 'often'")),
    ("`--labeled-fraction 2` (fractions outside (0, 1])", "error naming flag, key and range",
     _refused(_config(labeled_fraction=2.0), r"must be a number in \(0, 1\], got 2.0")),
    ("`--model-arg no_such_arg=1`", "error listing the arguments the detector accepts",
     _refused(lambda t, p: check_model_args(STUDENT, {"no_such_arg": 1}), "not an argument of .*accepts: ")),
    ("`--init` of another architecture, detector family or class count",
     "error naming both networks (architecture, classes), before training",
     _all(*(_refused(_weights_from({"arch": arch, "num_classes": n}, {"arch": STUDENT, "num_classes": 6}),
                     f"--init c.pth: it holds a {arch} with {n} classes .* this run's student is a {STUDENT} with 6")
            for arch, n in ((TEACHER, 6), ("retinanet_resnet50_fpn", 6), (STUDENT, 3))))),
    ("`--init` of the same architecture with other `--model-arg` shapes", "error naming the first weight that "
     "differs and both shapes",
     _refused(_weights_from({"arch": STUDENT, "num_classes": 6}, {"arch": STUDENT, "num_classes": 6},
                            weights={"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}),
              r"its weights do not fit: weight is \[3, 2\] there, \[2, 2\] here")),
    ("`--resume` with another `--arch`, `--recipe` or `--optimizer`", "error naming the setting and both values",
     _all(*(_refused(_resume_from(**{key: value}), f"c.pth was written by a run with --{key} {value}, this run has "
                                                   f"--{key} .*; resume with the same --{key}")
            for key, value in (("arch", TEACHER), ("recipe", "fgd"), ("optimizer", "adamw"))))),
    ("`--resume` of a checkpoint whose iteration is not a whole number", "error naming the value",
     _refused(_checkpoint("abc"), "is at iteration 'abc', not a whole number >= 0")),
    ("`--resume` of a checkpoint with an empty optimizer state", "error saying it holds none",
     _refused(_checkpoint(1, optimizer={}), r"holds no optimizer state \(state and param_groups\)")),
    ("`--batch-size 0` in eval, predict, pseudo-label", "error naming the flag and range",
     _each_command(("--batch-size", "0"), "--batch-size: must be an integer > 0, got 0")),
    ("`--threads 0` in eval, predict, pseudo-label", "error naming the flag and range",
     _each_command(("--threads", "0"), "--threads: must be an integer > 0, got 0")),
    ("`--workers -1` in eval, pseudo-label", "error naming the flag and range",
     _all(*(_refused(_command(*command, "--workers", "-1"), "--workers: must be an integer >= 0, got -1")
            for command in (_EVAL, _PSEUDO)))),
    ("`--output` a folder or under a file; `--output-dir` a file or under a file",
     "error naming the path and what it is", _outputs),
    ("`--output`/`--output-dir` in a folder without write permission", "error naming the folder", _unwritable),
    ("`--seed -1` or `--seed 4294967296`, `--labeled-subset-seed 2**64`", "error naming flag, key and range",
     _all(*(_refused(_config(**{key: value}), rf"\(config key {key}\): must be an integer in \[0, 2\^32 - 1\]")
            for key, value in (("seed", -1), ("seed", 2 ** 32), ("labeled_subset_seed", 2 ** 64))))),
    ("`--lr inf`, `--weight-decay inf`, `--epochs inf`, `--distill-auto-ratio inf`, `clip_grad: .inf`",
     "error naming flag, key and range: a value must be finite",
     _all(*(_refused(_config(**{key: math.inf}), rf"\(config key {key}\): must be .* and finite, got inf")
            for key in ("lr", "weight_decay", "epochs", "distill_auto_ratio", "clip_grad")))),
    ("`--distill-weights fgd=nan` (or inf, or -1)", "error: a weight is a finite number >= 0",
     _all(*(_refused(_config(recipe="fgd", distill_weights=f"fgd={w}"), f"fgd={w}: a weight must be a finite number "
                                                                         ">= 0") for w in ("nan", "inf", "-1")))),
    ("`--distill-weights cwd=2` with `--recipe fgd` (a term the recipe does not run)",
     "error naming the weight and the recipe's terms",
     _refused(_config(recipe="fgd", distill_weights="cwd=2"), "--distill-weights cwd: recipe 'fgd' has no such term "
                                                              r"\(it runs fgd\)")),
    ("`--recipe fgd,fgd`", "error naming the recipe given twice",
     _refused(_config(recipe="fgd,fgd"), "fgd is named twice")),
    ("`--recipe imitation,chen2017` (recipes that share a term)", "the union of their terms: imitation runs once",
     lambda t, p: check_train_config(TrainConfig(recipe="imitation,chen2017"), need_data=False)),
    ("`--weights NOPE`", "error listing torchvision's weights of the architecture",
     _refused(lambda t, p: check_weights_name(STUDENT, "NOPE", "--weights"),
              f"--weights NOPE: not a weights name of {STUDENT}; torchvision has DEFAULT, COCO_V1")),
    ("`--num-classes` below the dataset's labels", "error naming both counts, before training",
     _num_classes_below_labels),
    ("`--model-arg anchor_sizes=[16]` (a size per level, or an architecture with its own anchors)",
     "error naming the number of levels, or that the architecture sets its own", _anchor_sizes),
    ("`max_size` below `min_size`", "error naming both",
     _refused(_config(min_size=64, max_size=32), "--max-size 32 is below --min-size 64")),
    ("`epochs: 1e-9` (less than one iteration)", "error naming the iterations of an epoch",
     _refused(lambda t, p: epochs_to_iterations(TrainConfig(epochs=1e-9, batch_size=2), 4),
              "--epochs 1e-09 is less than one iteration: an epoch here is 4 iterations")),
    ("config file with a YAML alias (`*name`)", "error: aliases are not supported (nested ones grow exponentially)",
     _refused(_config_file("a: &x [1, 2]\nb: [*x, *x]\n"), r"aliases \(\*name\) are not supported")),
    ("config file with a key given twice", "error naming the key and line",
     _refused(_config_file("lr: 0.1\niterations: 3\nlr: 0.2\n"), "key 'lr' is given twice .*line 3")),
    ("`--score-threshold nan` or `2` (predict, pseudo-label, two-step)", "error naming the flag and range",
     _all(*(_refused(_command(*command, flag, value), rf"{flag}: must be a number in \[0, 1\]")
            for command, flag in ((_PREDICT, "--score-threshold"), (_PSEUDO, "--score-threshold"),
                                  (("two-step", "--steps", "1"), "--pseudo-score-threshold"))
            for value in ("nan", "2")))),
    ("`--nms-iou -1`, `--max-detections -1` (pseudo-label, two-step)", "error naming the flag and range",
     _all(*(_refused(_command(*command, flag, "-1"), f"{flag}: must be {allowed}")
            for command, flag, allowed in ((_PSEUDO, "--nms-iou", r"a number in \[0, 1\]"),
                                           (_PSEUDO, "--max-detections", "an integer > 0"),
                                           (("two-step",), "--pseudo-nms-iou", r"a number in \[0, 1\]"),
                                           (("two-step",), "--pseudo-max-detections", "an integer > 0"))))),
    ("val or `eval` json without `area`, `iscrowd` or an annotation `id`",
     "error naming the annotation and the key, before training", _scored_json_without),
    ("category id 0 or negative with `--category-ids-as-labels`", "error: label 0 is the background",
     _ids_as_labels),
    ("`plot` of a metrics.jsonl line that is not a json object", "error naming the file and line",
     _refused(_plot(['{"iteration": 1, "loss": 1.0}', "[1, 2]", '{"iteration": 2, "loss": 1.0}']),
              r"line 2 is not a json record \(an object\)")),
    ("`plot --output losses.xyz`", "error listing the formats matplotlib writes",
     _refused(_plot(['{"iteration": 1, "loss": 1.0}'], "losses.xyz"), r"--output .*losses.xyz: .xyz extension; "
                                                                       "the plot is written as one of: .*png")),
    ("image replaced by other bytes of the same size, mtime put back (`cp -p`)",
     "decoded again: the cache also keeps ctime and inode", _cache_keeps_size_and_mtime),
    ("16-bit grey PNG", "read by its range: values / 65535, three equal channels", _grey16),
    ("float32 TIFF", "read as it is with values in [0, 1]; outside [0, 1], error naming the range", _float_tiff),
    ("32-bit integer image (mode I)", "error naming the mode and what is read",
     _refused(_image(np.zeros((4, 4), np.int32), "i.tif"), r"mode I \(32-bit integers\); kdtrain reads")),
    ("`yolo --teacher`/`--student` .pt whose pickle runs code", "error naming the file and the type; it never runs",
     _yolo_payload),
    ("`yolo --data` or a model yaml with a `!!python/object` tag", "error naming the file and the tag",
     _yolo_yaml),
]


@pytest.mark.parametrize("check", [c[2] for c in CASES], ids=[c[0] for c in CASES])
def test_case_behaves_as_documented(check, tiny_data, tmp_path, monkeypatch):
    # Importing ultralytics (the yolo rows) replaces PIL's Image.open for the whole process: undone after the case.
    monkeypatch.setattr(Image, "open", Image.open)
    if check is _unwritable:  # root may write anywhere: the permission is what the check reads
        check(tiny_data, tmp_path, monkeypatch)
    else:
        check(tiny_data, tmp_path)


def test_the_doc_lists_exactly_these_cases():
    rows = []
    kdtrain_part = open(DOC).read().split("\n## kdops")[0]  # the kdops part: tests/test_bad_inputs_doc.py
    for line in kdtrain_part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0] not in ("Input", "") and not re.fullmatch(r"-+", cells[0]):
            rows.append(tuple(cells[:2]))
    assert rows == [(i, b) for i, b, _ in CASES]
