"""The efficacy benchmark at toy size: rows, JSON, markdown, plot, and resume after a kill."""

import json
import os

import pytest

from kdtrain import benchmark
from kdtrain.cli import main
from kdtrain.config import BenchmarkConfig
from kdtrain.errors import UsageError


class _Killed(Exception):
    pass


def _args(out, cache, *extra):
    return ["benchmark", "--recipes", "none", "imitation:auto", "--seeds", "0,1", "--iterations", "3",
            "--output-dir", str(out), "--cache-dir", str(cache), "--image-size", "64", "--generated-train-images", "6",
            "--generated-val-images", "3", "--teacher-iterations", "2", "--batch-size", "2", "--workers", "0",
            "--distill-auto-iters", "2", "--distill-warmup", "1", "--no-progress", *extra]


def test_benchmark_table_and_resume_after_a_kill(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "bench", tmp_path / "cache"
    real, ran = benchmark._train_one, []

    def dies_on_the_second_run(b, data, teacher, spec, seed, log):
        if len(ran) == 1:
            raise _Killed
        ran.append((spec, seed))
        return real(b, data, teacher, spec, seed, log)

    with monkeypatch.context() as m:
        m.setattr(benchmark, "_train_one", dies_on_the_second_run)
        with pytest.raises(_Killed):
            main(_args(out, cache))
    assert ran == [("none", 0)]
    saved = json.load(open(out / benchmark.RESULTS))
    assert [(r["name"], r["seed"]) for r in saved["runs"]] == [("none", 0)] and list(saved["rows"]) == ["none"]
    assert not os.path.exists(out / "runs" / "none-seed0" / "model_final.pth")  # measured, then deleted

    ran.clear()

    def counted(b, data, teacher, spec, seed, log):
        ran.append((spec, seed))
        return real(b, data, teacher, spec, seed, log)

    monkeypatch.setattr(benchmark, "_train_one", counted)
    capsys.readouterr()
    assert main(_args(out, cache)) == 0
    log = capsys.readouterr().out
    assert ran == [("imitation:auto", 0), ("none", 1), ("imitation:auto", 1)]  # only the runs not finished
    assert "1 of 4 runs already finished" in log

    result = json.load(open(out / benchmark.RESULTS))
    assert sorted((r["name"], r["seed"]) for r in result["runs"]) == [
        ("imitation:auto", 0), ("imitation:auto", 1), ("none", 0), ("none", 1)]
    rows = result["rows"]
    assert list(rows) == ["none", "imitation:auto"]
    auto = rows["imitation:auto"]
    for metric in ("mAP", "AP50"):
        stat = auto[metric]
        assert len(stat["per_seed"]) == 2 and stat["mean"] == pytest.approx(sum(stat["per_seed"]) / 2)
        assert stat["std"] >= 0
    by_seed = {(r["name"], r["seed"]): r for r in result["runs"]}
    assert auto["gain_mAP"]["per_seed"] == pytest.approx(
        [by_seed[("imitation:auto", s)]["mAP"] - by_seed[("none", s)]["mAP"] for s in (0, 1)])
    assert auto["seeds_better"] == sum(g > 0 for g in auto["gain_mAP"]["per_seed"])
    assert "gain_mAP" not in rows["none"] and rows["none"]["distill_overhead"] is None
    assert 0 < auto["distill_overhead"] < 1
    assert result["overhead"]["imitation"]["seconds"]["step"] > result["overhead"]["imitation"]["seconds"]["imitation"]
    for seed_weights in auto["distill_weights"]:  # chosen per seed by the calibration
        assert seed_weights["imitation"] > 0
    assert all(by_seed[("imitation:auto", s)]["auto_weights"]["iteration"] == 1 for s in (0, 1))
    assert all(r["wall_seconds"] > 0 for r in result["runs"])

    table = (out / benchmark.TABLE).read_text()
    assert table.splitlines()[0].startswith("| recipe | seeds | mAP | AP50 | APs | mAP gain vs none")
    assert sum(line.startswith("| none |") or line.startswith("| imitation:auto |") for line in table.splitlines()) == 2
    assert "imitation:auto weights chosen per seed: imitation=" in table
    assert os.path.getsize(out / benchmark.PLOT) > 1000

    # Another budget into the same folder would mix numbers that do not compare.
    with pytest.raises(SystemExit):
        main(_args(out, cache, "--iterations", "4"))
    assert "iterations 3 -> 4" in capsys.readouterr().err


def test_benchmark_settings_are_checked_before_anything_runs(tmp_path):
    def check(**kw):
        benchmark.check_benchmark_config(BenchmarkConfig(output_dir=str(tmp_path), **kw))

    for kw, says in (({"recipes": ("none", "fdg")}, "--recipes: 'fdg': unknown recipe"),
                     ({"recipes": ("fgd:fgd=often",)}, "expected a number or auto"),
                     ({"recipes": ("none:auto",)}, "has no distillation weights"),
                     ({"recipes": ("fgd", "fgd")}, "names a row twice"),
                     ({"seeds": (0, 0)}, "--seeds"),
                     ({"iterations": 10}, "above --distill-auto-iters"),
                     ({"lr": 0}, "--lr .* must be a number > 0"),
                     ({"train_ann": str(tmp_path)}, "missing: --train-images, --val-images, --val-ann, --teacher")):
        with pytest.raises(UsageError, match=says):
            check(**kw)
    assert benchmark.split_spec("chen2017:chen_rcn=auto,imitation=1") == ("chen2017", "chen_rcn=auto,imitation=1")
