"""The demo pipeline end to end at toy size: table, JSON, plot, cached teacher reused."""

import json
import os

import pytest

from kdtrain_testutil import TEACHER_ITERATIONS

from kdtrain.demo import DemoConfig, run_demo
from kdtrain.errors import UsageError
from kdtrain.metrics_log import MetricsWriter


@pytest.mark.slow
def test_demo_end_to_end_and_teacher_cache(tmp_path):
    lines = []
    d = DemoConfig(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_size=64,
                   train_images=6, val_images=3, teacher_iterations=TEACHER_ITERATIONS, student_iterations=2, batch_size=2,
                   workers=0, progress=False, distill_warmup=1, pretrain_steps=0)
    result = run_demo(d, log=lines.append)
    assert set(result["rows"]) == {"teacher", "student", f"student+{d.recipe}"}
    for row in result["rows"].values():
        assert 0.0 <= row["mAP"] <= 1.0 and row["params"] > 1e6 and row["images_per_s"] > 0
    assert result["distill_cost_seconds"]["step"] > result["distill_cost_seconds"][d.recipe] > 0
    table = next(line for line in lines if line.startswith("model"))
    assert "mAP" in table and "APs" in table and "img/s" in table
    assert json.load(open(tmp_path / "out" / "demo_results.json"))["rows"].keys() == result["rows"].keys()
    assert os.path.getsize(tmp_path / "out" / "demo_results.png") > 1000

    lines.clear()
    run_demo(d, log=lines.append)
    assert any("reusing cached teacher" in line for line in lines)


def test_metrics_writer_json_lines_and_optional_tensorboard(tmp_path):
    path = tmp_path / "m.jsonl"
    try:
        import torch.utils.tensorboard  # noqa: F401
        has_tb = True
    except ImportError:
        has_tb = False
    if has_tb:
        writer = MetricsWriter(str(path), str(tmp_path / "tb"))
        writer.write({"kind": "train", "iteration": 1, "loss": 0.5})
        writer.close()
        assert os.listdir(tmp_path / "tb")
    else:
        try:
            MetricsWriter(str(path), str(tmp_path / "tb"))
        except UsageError as e:
            assert "pip install tensorboard" in str(e)
        else:
            raise AssertionError("--tensorboard without tensorboard must say how to install it")
        writer = MetricsWriter(str(path))
        writer.write({"kind": "train", "iteration": 1, "loss": 0.5})
    assert json.loads(path.read_text().splitlines()[0]) == {"iteration": 1, "kind": "train", "loss": 0.5}
