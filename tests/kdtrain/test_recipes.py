"""Each recipe trains a few iterations through the CLI and is evaluated with pycocotools."""

import json
import os

import pytest

from kdtrain.cli import main
from kdtrain.evaluate import METRIC_NAMES
from kdtrain.metrics_log import read_jsonl

from kdtrain_testutil import kdops_has, train_args

RECIPE_OPS = {
    "none": (),
    "imitation": ("nn.HintLoss", "feature_imitation"),
    "fgd": ("nn.FGDLoss",),
    "chen2017": ("nn.HintLoss", "soft_cross_entropy", "bounded_regression", "soft_binary_cross_entropy"),
    "cwd": ("cwd_loss",),
    "pkd": ("pkd_loss",),
    "fgd,chen2017": ("nn.FGDLoss", "soft_cross_entropy", "bounded_regression"),
}


@pytest.mark.parametrize("recipe", list(RECIPE_OPS))
def test_recipe_trains_and_evaluates(recipe, tiny_data, teacher_ckpt, tmp_path):
    if not kdops_has(*RECIPE_OPS[recipe]):
        pytest.skip(f"kdops does not provide {RECIPE_OPS[recipe]} yet")
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


def test_missing_kdops_op_is_named_before_training(tiny_data, teacher_ckpt, tmp_path, monkeypatch):
    import kdops

    monkeypatch.delattr(kdops, "feature_imitation", raising=False)
    with pytest.raises(NotImplementedError, match="kdops.feature_imitation"):
        main(train_args(tiny_data, tmp_path / "x", "--iterations", 1, "--recipe", "imitation",
                        "--teacher", teacher_ckpt))
    assert not os.path.exists(tmp_path / "x" / "metrics.jsonl")
