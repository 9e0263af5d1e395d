"""docs/bad_inputs.md lists exactly the cases below, and each behaves as the table says.

One list: a row added here must be added to the doc (and the other way round). The checks run the
same code the commands run, at the level where it is quick; tests named in the last column of
docs/bad_inputs.md drive the full command.
"""

import json
import os
import re

import pytest

from kdtrain import checkpoint as ckpt_io
from kdtrain.config import TrainConfig, check_train_config, read_config_file
from kdtrain.data.coco import CocoDetection
from kdtrain.data.image_check import check_images
from kdtrain.errors import UsageError
from kdtrain.commands.eval import checkpoint_label_map
from kdtrain.metrics_log import read_jsonl
from kdtrain.model_args import check_model_args
from kdtrain.resume import load_training_state, restart_metrics

from kdtrain_testutil import REPO, STUDENT

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


def _checkpoint(iteration, exported=False):
    def run(tiny_data, tmp_path):
        state = {"model_spec": {}, "model_state": {}, "iteration": iteration}
        if not exported:
            state.update(distill_state={}, optimizer={}, scheduler={}, scaler={}, rng={})
        ckpt_io.atomic_save(state, str(tmp_path / "c.pth"))
        load_training_state(str(tmp_path / "c.pth"), 3)
    return run


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
]


@pytest.mark.parametrize("check", [c[2] for c in CASES], ids=[c[0] for c in CASES])
def test_case_behaves_as_documented(check, tiny_data, tmp_path):
    check(tiny_data, tmp_path)


def test_the_doc_lists_exactly_these_cases():
    rows = []
    kdtrain_part = open(DOC).read().split("\n## kdops")[0]  # the kdops part: tests/test_bad_inputs_doc.py
    for line in kdtrain_part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0] not in ("Input", "") and not re.fullmatch(r"-+", cells[0]):
            rows.append(tuple(cells[:2]))
    assert rows == [(i, b) for i, b, _ in CASES]
