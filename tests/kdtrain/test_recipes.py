"""Each recipe trains a few iterations through the CLI and is evaluated with pycocotools."""

import json
import os

import pytest

from kdtrain.cli import main
from kdtrain.evaluate import METRIC_NAMES
from kdtrain.metrics_log import read_jsonl

from kdtrain_testutil import train_args


@pytest.mark.parametrize("recipe", ["none", "imitation", "fgd", "chen2017", "cwd", "pkd", "fgd,chen2017"])
def test_recipe_trains_and_evaluates(recipe, tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_data, out, "--iterations", 3, "--recipe", recipe, "--teacher", teacher_ckpt,
                           "--distill-warmup", 2)) == 0
    metrics = json.load(open(out / "eval.json"))
    assert set(METRIC_NAMES) <= set(metrics) and all(0.0 <= metrics[k] <= 1.0 for k in METRIC_NAMES
                                                     if metrics[k] is not None)
    assert metrics["APl"] is None  # the tiny set has no large objects: n/a, not 0
    records = read_jsonl(str(out / "metrics.jsonl"))
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train_records] == [1, 2, 3]
    distill_keys = {k for r in train_records for k in r if k.startswith("distill_")}
    if recipe == "none":
        assert not distill_keys
    else:
        assert distill_keys, "distillation terms must be logged"
    assert records[-1]["kind"] == "eval"
    assert os.path.isfile(out / "model_final.pth") and not os.path.exists(out / "checkpoint_last.pth")
