"""`python -m kdtrain plot RUN_DIR`: one line per loss key of metrics.jsonl, nothing else."""

import json

import pytest
from PIL import Image

from kdtrain_testutil import train_args

from kdtrain.cli import main
from kdtrain.config import PlotConfig
from kdtrain.metrics_log import read_jsonl
from kdtrain.commands.plot import plot_run

DETECTION = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_plots_a_real_run(tiny_data, teacher_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_data, run, "--iterations", 3, "--teacher", teacher_ckpt, "--recipe", "imitation",
                           "--no-eval")) == 0
    assert main(["plot", str(run)]) == 0
    assert f"loss curves written to {run / 'losses.png'}" in capsys.readouterr().out
    with Image.open(run / "losses.png") as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 400

    path, lines = plot_run(PlotConfig(str(run), output=str(tmp_path / "elsewhere" / "curves.png")))
    assert path == str(tmp_path / "elsewhere" / "curves.png")
    # Each detection loss, the total, the weighted distillation term and its gradient ratio (logged at
    # iteration 0, --grad-ratio-every); not lr, timings or raw_* values.
    assert set(lines) == DETECTION | {"loss", "distill_imitation", "ratio_imitation"}
    ratio, = [r for r in read_jsonl(str(run / "metrics.jsonl")) if r["kind"] == "grad_ratio"]
    assert list(lines.pop("ratio_imitation").get_ydata()) == [ratio["ratios"]["imitation"]]
    records = [r for r in read_jsonl(str(run / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(records) == 3
    for key, line in lines.items():
        assert list(line.get_xdata()) == [r["iteration"] for r in records]
        assert list(line.get_ydata()) == [r[key] for r in records]
    detection_axes, distill_axes = lines["loss"].axes, lines["distill_imitation"].axes
    assert detection_axes is not distill_axes
    assert {line.get_label() for line in distill_axes.get_lines()} == {"distill_imitation"}


def _write(path, records, torn=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_without_distillation_one_panel_and_the_eval_in_the_title(tmp_path, capsys):
    train = [{"kind": "train", "iteration": i, "epoch": 0, "lr": 0.01, "seconds_per_iter": 0.5, "loss": 3.0 / i,
              "classification": 2.0 / i, "bbox_regression": 1.0 / i} for i in (10, 20)]
    _write(tmp_path / "metrics.jsonl", train + [{"kind": "eval", "iteration": 20, "mAP": 0.25}],
           torn='{"kind": "train", "iter')  # a run killed mid-write
    path, lines = plot_run(PlotConfig(str(tmp_path)))
    assert set(lines) == {"loss", "classification", "bbox_regression"}  # RetinaNet's loss names
    assert len(lines["loss"].figure.axes) == 1
    assert "final eval mAP 0.2500" in lines["loss"].figure.get_suptitle()
    assert "ignoring its torn last line" in capsys.readouterr().out


def test_bad_run_dirs_are_usage_errors(tmp_path, capsys):
    def error(argv):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert f"RUN_DIR: no such folder: {tmp_path / 'none'}" in error(["plot", str(tmp_path / "none")])
    assert "no metrics.jsonl" in error(["plot", str(tmp_path)])
    _write(tmp_path / "metrics.jsonl", [{"kind": "eval", "iteration": 3, "mAP": 0.1}])
    assert "no training records yet" in error(["plot", str(tmp_path)])
