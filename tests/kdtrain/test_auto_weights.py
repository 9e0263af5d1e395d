"""Automatic distillation weights: parsing, the calibration rule, and the checkpoint round trip."""

import json
import math
import os

import pytest
import torch

from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection, collate
from kdtrain.distill.auto_weights import AutoWeights
from kdtrain.distill.distiller import Distiller
from kdtrain.distill.recipes import DEFAULT_WEIGHTS, TERM_KEYS, parse_weight_spec
from kdtrain.errors import UsageError
from kdtrain.metrics_log import read_jsonl
from kdtrain.models import build_detector

from kdtrain_testutil import TEACHER, Killed, kill_after_checkpoint, tiny_spec, train_args


def test_weight_spec_auto_for_all_or_per_term():
    weights, auto = parse_weight_spec("auto")
    assert weights == DEFAULT_WEIGHTS and set(auto) == set(DEFAULT_WEIGHTS)
    weights, auto = parse_weight_spec("fgd=auto,chen_rcn=0.25")
    assert auto == ("fgd",) and weights["chen_rcn_cls"] == weights["chen_rcn_reg"] == 0.25
    assert parse_weight_spec({"chen_rcn": "auto", "chen_rcn_reg": 2})[1] == ("chen_rcn_cls",)  # later items win
    for bad, says in (("fgd=often", "expected a number or auto"), ("fdg=auto", "unknown distillation weight 'fdg'"),
                      ("fgd", "expected NAME=VALUE")):
        with pytest.raises(UsageError, match=says) as e:
            parse_weight_spec(bad)
        assert "--distill-weights" in str(e.value)


@pytest.fixture(scope="module")
def batch(tiny_data):
    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=False)
    images, targets = collate([ds[0], ds[1]])
    return list(images), list(targets)


def _grad_norms(loss, params):
    """{param index: |grad|^2} over the parameters ``loss`` reaches."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {i: float(g.pow(2).sum()) for i, g in enumerate(grads) if g is not None}


@pytest.mark.parametrize("recipe", ["imitation", "pkd", "chen2017"])
def test_calibrated_weight_gives_the_target_gradient_ratio(recipe, batch):
    torch.manual_seed(0)
    student, teacher = build_detector(tiny_spec()), build_detector(tiny_spec(TEACHER))
    lines = []
    d = Distiller(student, teacher, recipe, "auto", auto_ratio=0.3, auto_iters=2, log=lines.append).train()
    keys = [k for name in d.terms for k in TERM_KEYS[name]]
    assert d.auto is not None and list(d.auto.keys) == keys
    for step in range(2):
        torch.manual_seed(1)  # the same proposals and samples each time: one calibration batch
        losses = d(*batch, step)
        if step == 0:  # still calibrating: the automatic terms are off
            assert all(float(losses[f"distill_{k}"].detach()) == 0.0 for k in d.raw)
            assert d.calibration_report(0) is None
    assert d.auto.calibrated and d.auto.report["iteration"] == 1
    assert d.calibration_report(1) is d.auto.report  # the step that fixed the weights returns the record, once
    assert d.calibration_report(0) is None and d.calibration_report(2) is None
    assert any("automatic distillation weights after 2 iterations" in line for line in lines)

    # Recompute the ratio on the calibration batch, independently of AutoWeights.
    torch.manual_seed(1)
    losses = d(*batch, 2)
    params = [p for p in student.parameters() if p.requires_grad]
    det = _grad_norms(sum(v for k, v in losses.items() if not k.startswith("distill_")), params)
    measured = [k for k in d.raw if k not in d.auto.report["unmeasured"]]
    assert measured and set(measured) == set(d.auto.report["grad_ratio_at_weight_1"])
    for key in d.auto.report["unmeasured"]:  # e.g. bounded regression, 0 while the student beats the teacher
        assert d.auto.weights[key] == DEFAULT_WEIGHTS[key]
        assert not any(_grad_norms(losses[f"distill_{key}"], params).values())
    for key in measured:
        weight = d.auto.weights[key]
        assert math.isfinite(weight) and weight > 0
        assert float(losses[f"distill_{key}"].detach()) == pytest.approx(float(d.raw[key]) * weight, rel=1e-5)
        term = _grad_norms(losses[f"distill_{key}"], params)
        shared = [i for i in term if i in det]
        assert shared  # the term reaches the student
        ratio = math.sqrt(sum(term[i] for i in shared)) / math.sqrt(sum(det[i] for i in shared))
        assert ratio == pytest.approx(0.3, rel=1e-3)
        assert d.auto.report["grad_ratio_at_weight_1"][key] == pytest.approx(0.3 / weight, rel=1e-6)


def test_per_term_auto_leaves_the_other_weights_and_unknown_state_is_refused(batch):
    torch.manual_seed(0)
    student, teacher = build_detector(tiny_spec()), build_detector(tiny_spec(TEACHER))
    d = Distiller(student, teacher, "imitation", "imitation=0.5", auto_iters=1)
    assert d.auto is None and d.effective_weights() == {"imitation": 0.5}
    d = Distiller(student, teacher, "imitation", "pkd=auto")  # auto for a term the recipe does not run
    assert d.auto is None
    auto = AutoWeights(["imitation"], DEFAULT_WEIGHTS, iters=3)
    with pytest.raises(UsageError, match="was not written by a run with --distill-weights auto"):
        auto.load_state_dict(None)
    with pytest.raises(UsageError, match="are for fgd, this run's for imitation"):
        auto.load_state_dict({**auto.state_dict(), "keys": ["fgd"]})
    with pytest.raises(UsageError, match="--distill-auto-iters"):
        AutoWeights(["imitation"], DEFAULT_WEIGHTS, iters=0)


@pytest.mark.parametrize("at", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_auto_weights_survive_a_kill_during_and_after_calibration(at, tiny_data, teacher_ckpt, tmp_path, monkeypatch,
                                                                  capsys):

    def args(out):  # constant lr: the steps do not depend on where a run was cut
        return train_args(tiny_data, out, "--iterations", 5, "--checkpoint-every", 2, "--no-eval", "--recipe",
                          "imitation", "--teacher", teacher_ckpt, "--distill-weights", "auto",
                          "--distill-auto-iters", 3, "--distill-auto-ratio", 0.2, "--lr-schedule", "constant")

    whole = tmp_path / "whole"
    assert main(args(whole)) == 0
    records = read_jsonl(str(whole / "metrics.jsonl"))
    chosen = [r for r in records if r["kind"] == "auto_weights"]
    assert len(chosen) == 1 and chosen[0]["iteration"] == 2 and chosen[0]["target_ratio"] == 0.2
    weight = chosen[0]["weights"]["imitation"]
    assert math.isfinite(weight) and weight > 0
    assert json.load(open(whole / "config.json"))["distill_auto_iters"] == 3
    # Weighted 0 while calibrating, the chosen weight after.
    distill = [r["distill_imitation"] for r in records if r["kind"] == "train"]
    assert distill[:2] == [0.0, 0.0] and all(v > 0 for v in distill[2:])

    final = torch.load(whole / "model_final.pth", weights_only=True)["model_state"]
    # Killed mid-calibration (at 2: its sums are in the checkpoint), or after it (at 4).
    out = tmp_path / f"killed_at_{at}"
    with monkeypatch.context() as m:
        kill_after_checkpoint(m, at)
        with pytest.raises(Killed):
            main(args(out))
    capsys.readouterr()
    assert main(args(out) + ["--resume"]) == 0
    log = capsys.readouterr().out
    assert ("automatic distillation weights from the checkpoint" in log) == (at == 4)
    records = read_jsonl(str(out / "metrics.jsonl"))
    assert [r["weights"] for r in records if r["kind"] == "auto_weights"] == [{"imitation": weight}]
    resumed = torch.load(out / "model_final.pth", weights_only=True)["model_state"]
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_calibration_must_end_before_the_run(tiny_data, teacher_ckpt, tmp_path):
    with pytest.raises(SystemExit):  # the CLI turns the UsageError into exit code 2
        main(train_args(tiny_data, tmp_path / "r", "--iterations", 3, "--recipe", "imitation", "--teacher",
                        teacher_ckpt, "--distill-weights", "auto", "--distill-auto-iters", 3))


@pytest.mark.slow
def test_ddp_ranks_calibrate_together(tiny_data, teacher_ckpt, tmp_path):
    """Two gloo processes: the calibration sums are all-reduced at its one host read, then training goes on."""
    import subprocess
    import sys

    from kdtrain_testutil import REPO

    out = tmp_path / "ddp"
    args = train_args(tiny_data, out, "--iterations", 3, "--device", "cpu", "--threads", 1, "--no-eval", "--recipe",
                      "imitation", "--teacher", teacher_ckpt, "--distill-weights", "auto", "--distill-auto-iters", 2)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdtrain", *args]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(str(out / "metrics.jsonl"))
    chosen = [r for r in records if r["kind"] == "auto_weights"]
    assert len(chosen) == 1 and chosen[0]["weights"]["imitation"] > 0  # rank 0 writes it once
    assert [r["distill_imitation"] > 0 for r in records if r["kind"] == "train"] == [False, True, True]
