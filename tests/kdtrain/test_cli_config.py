"""CLI: help, config-file precedence, eval and predict subcommands; schedule and atomic save."""

import json
import os

import pytest
import torch

from kdtrain import checkpoint as ckpt_io
from kdtrain.cli import build_parser, main
from kdtrain.config import make_config, read_config_file
from kdtrain.engine import lr_factor

from kdtrain_testutil import train_args


def test_help_explains_every_subcommand(capsys):
    for sub in ("train", "eval", "predict", "demo"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([sub, "--help"])
        assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--recipe" in text and "comma-combinable" in text and "--resume" in text and "--amp" in text


def test_config_file_then_cli_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.5\nbatch-size: 7\nrecipe: fgd\n")
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('lr = 0.25\nlr_schedule = "step"\n')
    assert read_config_file(str(toml_file)) == {"lr": 0.25, "lr_schedule": "step"}
    cfg = make_config(read_config_file(str(yaml_file)), {"lr": 0.1})
    assert (cfg.lr, cfg.batch_size, cfg.recipe, cfg.iterations) == (0.1, 7, "fgd", 1000)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        read_config_file(str(bad))


def test_train_eval_predict_round_trip(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("iterations = 2\nseed = 3\n")
    assert main(train_args(tiny_data, out, "--config", cfg, "--no-eval")) == 0
    saved = json.load(open(out / "config.json"))
    assert saved["iterations"] == 2 and saved["seed"] == 3 and saved["model_kwargs"]["box_batch_size_per_image"] == 32
    metrics_path = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(out / "model_final.pth"), "--images", tiny_data["val"]["images"],
                 "--ann", tiny_data["val"]["ann"], "--workers", "0", "--output", str(metrics_path),
                 "--no-progress"]) == 0
    assert "mAP" in json.load(open(metrics_path))
    preds = tmp_path / "preds.json"
    assert main(["predict", "--checkpoint", str(out / "model_final.pth"), "--images", tiny_data["val"]["images"],
                 "--ann", tiny_data["val"]["ann"], "--output", str(preds), "--score-threshold", "0",
                 "--no-progress"]) == 0
    results = json.load(open(preds))
    assert results and {"image_id", "category_id", "bbox", "score", "file_name"} <= set(results[0])
    # pycocotools accepts them as results for the dataset.
    from pycocotools.coco import COCO
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        COCO(tiny_data["val"]["ann"]).loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")}
                                               for r in results])


def test_predict_on_empty_folder_is_clear(tiny_data, tmp_path):
    from kdtrain.data.coco import DatasetError
    from kdtrain.predict import list_images

    with pytest.raises(DatasetError, match="no images"):
        list_images(str(tmp_path))


def test_lr_schedule_warmup_step_cosine():
    assert lr_factor(0, 100, 10, 0.001, "cosine") == pytest.approx(0.001)
    assert lr_factor(10, 100, 10, 0.001, "cosine") == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.1 * 3.14159265)).item()), rel=1e-4)
    assert lr_factor(100, 100, 10, 0.001, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, 0.001, "step", steps=(30, 60), gamma=0.1) == pytest.approx(0.1)
    assert lr_factor(70, 100, 0, 0.001, "step", steps=(30, 60), gamma=0.1) == pytest.approx(0.01)


def test_atomic_save_keeps_the_old_checkpoint_when_a_write_fails(tmp_path):
    path = tmp_path / "checkpoint_last.pth"
    ckpt_io.atomic_save({"iteration": 1}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt_io.atomic_save({"iteration": 2, "bad": Unpicklable()}, str(path))
    assert torch.load(path, weights_only=False)["iteration"] == 1
    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]
