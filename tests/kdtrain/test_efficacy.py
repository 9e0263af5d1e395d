"""The efficacy table at toy size: rows, JSON, markdown, plot, and resume after a kill."""

import json
import os

import pytest

from kdtrain_testutil import TEACHER_ITERATIONS

from kdtrain import efficacy
from kdtrain.cli import build_parser, main, subcommand_parsers
from kdtrain.config import EfficacyConfig
from kdtrain.errors import UsageError


class _Killed(BaseException):
    """A kill (as KeyboardInterrupt or SIGKILL), not a failed run: it stops the table."""


def _args(out, cache, *extra):
    return ["efficacy", "--recipes", "none", "imitation:auto", "--seeds", "0,1", "--iterations", "3",
            "--output-dir", str(out), "--cache-dir", str(cache), "--image-size", "64", "--generated-train-images", "6",
            "--generated-val-images", "3", "--teacher-iterations", str(TEACHER_ITERATIONS), "--pretrain-steps", "0",
            "--batch-size", "2", "--workers", "0",
            "--distill-auto-iters", "2", "--distill-warmup", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_efficacy_table_and_resume_after_a_kill(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "efficacy", tmp_path / "cache"
    real, ran = efficacy._train_one, []

    def dies_on_the_second_run(b, data, teacher, spec, seed, log):
        if len(ran) == 1:
            raise _Killed
        ran.append((spec, seed))
        return real(b, data, teacher, spec, seed, log)

    with monkeypatch.context() as m:
        m.setattr(efficacy, "_train_one", dies_on_the_second_run)
        with pytest.raises(_Killed):
            main(_args(out, cache))
    assert ran == [("none", 0)]
    saved = json.load(open(out / efficacy.RESULTS))
    assert [(r["name"], r["seed"]) for r in saved["runs"]] == [("none", 0)] and list(saved["rows"]) == ["none"]
    assert not os.path.exists(out / "runs" / "none-seed0" / "model_final.pth")  # measured, then deleted

    ran.clear()

    def counted(b, data, teacher, spec, seed, log):
        ran.append((spec, seed))
        return real(b, data, teacher, spec, seed, log)

    monkeypatch.setattr(efficacy, "_train_one", counted)
    capsys.readouterr()
    assert main(_args(out, cache)) == 0
    log = capsys.readouterr().out
    assert ran == [("imitation:auto", 0), ("none", 1), ("imitation:auto", 1)]  # only the runs not finished
    assert "1 of 4 runs already finished" in log

    result = json.load(open(out / efficacy.RESULTS))
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

    table = (out / efficacy.TABLE).read_text()
    assert table.splitlines()[0].startswith("| recipe | seeds | mAP | AP50 | APs | mAP gain vs none")
    assert sum(line.startswith("| none |") or line.startswith("| imitation:auto |") for line in table.splitlines()) == 2
    assert "imitation:auto weights chosen per seed: imitation=" in table
    assert os.path.getsize(out / efficacy.PLOT) > 1000

    # Another budget into the same folder would mix numbers that do not compare.
    with pytest.raises(SystemExit):
        main(_args(out, cache, "--iterations", "4"))
    assert "iterations 3 -> 4" in capsys.readouterr().err


def _without_training(monkeypatch, train_one):
    """The table's runs are ``train_one``; no data or teacher is made, and every recipe costs a quarter step."""
    monkeypatch.setattr(efficacy, "_train_one", train_one)
    monkeypatch.setattr(efficacy, "_data_and_teacher",
                        lambda b, log: ({}, "teacher.pth", {"mAP": 0.3, "AP50": 0.5, "APs": 0.1}))
    monkeypatch.setattr(efficacy, "_overhead", lambda b, data, teacher, recipe, path: {
        "seconds": {"step": 1.0, recipe: 0.25}, "fraction_of_step": 0.25})


def _made_up_run(spec, seed, m, weights, model):
    """What _train_one returns for a run whose metrics are ``m`` (mAP), 2m (AP50) and m/2 (APs)."""
    return ({"name": spec, "seed": seed, "mAP": m, "AP50": 2 * m, "APs": m / 2, "params": 1,
             "train_seconds_per_iter": 0.5, "recipe": spec.split(":")[0], "weights": "auto",
             "wall_seconds": 60.0, "distill_weights": weights, "auto_weights": None},
            {"final_checkpoint": str(model)})


def test_efficacy_bookkeeping_without_training(tmp_path, monkeypatch, capsys):
    """The slow test's bookkeeping, each run's training replaced by made-up metrics: the runs a killed
    invocation finished are skipped, rows, paired gains, the table and the plot."""
    made_up = {("none", 0): 0.10, ("imitation:auto", 0): 0.13, ("none", 1): 0.12, ("imitation:auto", 1): 0.11}
    ran, killed = [], []

    def train_one(b, data, teacher, spec, seed, log):
        if ran and not killed:  # the first invocation dies in its second run
            killed.append((spec, seed))
            raise _Killed
        ran.append((spec, seed))
        m = made_up[(spec, seed)]
        model = tmp_path / f"{spec}-{seed}.pth"
        model.write_bytes(b"weights")
        return _made_up_run(spec, seed, m, {"imitation": 0.3 + seed} if spec != "none" else {}, model)

    _without_training(monkeypatch, train_one)
    out = tmp_path / "efficacy"
    args = ["efficacy", "--recipes", "none", "imitation:auto", "--seeds", "0,1", "--output-dir", str(out),
            "--no-progress"]
    with pytest.raises(_Killed):
        main(args)
    assert [(r["name"], r["seed"]) for r in json.load(open(out / efficacy.RESULTS))["runs"]] == [("none", 0)]
    assert not (tmp_path / "none-0.pth").exists()  # measured, then deleted

    capsys.readouterr()
    assert main(args) == 0
    assert killed == [("imitation:auto", 0)]
    assert ran == [("none", 0), ("imitation:auto", 0), ("none", 1), ("imitation:auto", 1)]  # none 0 ran once
    assert "1 of 4 runs already finished" in capsys.readouterr().out
    result = json.load(open(out / efficacy.RESULTS))
    auto = result["rows"]["imitation:auto"]
    assert auto["mAP"]["per_seed"] == [0.13, 0.11] and auto["mAP"]["mean"] == pytest.approx(0.12)
    assert auto["gain_mAP"]["per_seed"] == pytest.approx([0.03, -0.01]) and auto["seeds_better"] == 1
    assert auto["distill_overhead"] == 0.25 and result["rows"]["none"]["distill_overhead"] is None
    assert "gain_mAP" not in result["rows"]["none"]
    table = (out / efficacy.TABLE).read_text()
    assert "| imitation:auto | 2 | 0.1200 ± 0.0141 |" in table and "| 1/2 | 1.0 | 0.50 | 25.0% |" in table
    assert "imitation:auto weights chosen per seed: imitation=0.3; imitation=1.3" in table
    assert os.path.getsize(out / efficacy.PLOT) > 1000
    with pytest.raises(SystemExit):  # another budget into the same folder
        main(args + ["--iterations", "250"])
    assert f"iterations {EfficacyConfig.iterations} -> 250" in capsys.readouterr().err


def test_a_failed_run_is_recorded_and_the_table_goes_on(tmp_path, monkeypatch, capsys):
    """One run stops with a non-finite loss: it is listed as failed with its one line, the others finish,
    the command exits 1; started again, only the failed run runs, and its result replaces the failure."""
    from kdtrain.nonfinite import NonFiniteError

    ran, fail = [], {("imitation:auto", 0)}

    def train_one(b, data, teacher, spec, seed, log):
        ran.append((spec, seed))
        if (spec, seed) in fail:
            raise NonFiniteError("iteration 3: the gradient of distillation term imitation is not finite (NaN or "
                                 "Inf); try a lower weight\nsecond line")
        return _made_up_run(spec, seed, 0.1 + 0.01 * seed + (0.02 if spec != "none" else 0.0), {},
                            tmp_path / "absent.pth")

    _without_training(monkeypatch, train_one)
    out = tmp_path / "efficacy"
    args = ["efficacy", "--recipes", "none", "imitation:auto", "--seeds", "0,1", "--output-dir", str(out),
            "--no-progress", "--keep-models"]
    assert main(args) == 1
    assert ran == [("none", 0), ("imitation:auto", 0), ("none", 1), ("imitation:auto", 1)]  # all four ran
    reason = ("NonFiniteError: iteration 3: the gradient of distillation term imitation is not finite (NaN or Inf); "
              "try a lower weight")
    assert f"imitation:auto seed 0 failed: {reason}" in capsys.readouterr().out
    result = json.load(open(out / efficacy.RESULTS))
    failed = [r for r in result["runs"] if "failed" in r]
    assert [(r["name"], r["seed"], r["failed"]) for r in failed] == [("imitation:auto", 0, reason)]
    assert result["rows"]["imitation:auto"]["seeds"] == [1]  # the failed seed is in no statistic
    assert result["rows"]["imitation:auto"]["gain_mAP"]["per_seed"] == pytest.approx([0.02])
    table = (out / efficacy.TABLE).read_text()
    assert f"| imitation:auto | 0 | {reason} |" in table and "| imitation:auto | 1 |" in table

    ran.clear()
    fail.clear()
    assert main(args) == 0
    assert ran == [("imitation:auto", 0)]  # only the failed run again
    result = json.load(open(out / efficacy.RESULTS))
    assert len(result["runs"]) == 4 and not any("failed" in r for r in result["runs"])
    assert result["rows"]["imitation:auto"]["seeds"] == [0, 1]
    assert "Failed runs" not in (out / efficacy.TABLE).read_text()


def test_efficacy_settings_are_checked_before_anything_runs(tmp_path):
    def check(**kw):
        efficacy.check_efficacy_config(EfficacyConfig(output_dir=str(tmp_path), **kw))

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
    assert efficacy.split_spec("chen2017:chen_rcn=auto,imitation=1") == ("chen2017", "chen_rcn=auto,imitation=1")


def test_benchmark_is_the_efficacy_command_under_its_former_name():
    parsers = subcommand_parsers(build_parser())
    assert parsers["benchmark"] is parsers["efficacy"]
    args = build_parser().parse_args(["benchmark", "--seeds", "3,4"])
    assert args.seeds == (3, 4) and args.run is parsers["efficacy"].get_default("run")
