"""The two-step recipe (pseudo-labels + masked imitation, then fine-tuning) and label-scarce subsets."""

import json

import pytest
import torch

from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection
from kdtrain.data.coco import keep_labeled_fraction, labeled_image_indices
from kdtrain.metrics_log import read_jsonl

from kdtrain_testutil import TEACHER, train_args


def _two_step(tiny_data, out, *extra):
    args = train_args(tiny_data, out, "--no-eval", *extra)
    args[0] = "two-step"
    return main(["--debug", *args])  # --debug: errors raise instead of exiting with the usage line


def test_both_steps_run_and_chain(tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    assert _two_step(tiny_data, out, "--teacher", teacher_ckpt, "--pseudo-score-threshold", 0,
                     "--pseudo-max-detections", 3, "--step1-iterations", 2, "--step2-iterations", 2,
                     "--labeled-fraction", 0.5) == 0
    pseudo = json.load(open(out / "pseudo_labels.json"))
    assert pseudo["annotations"] and pseudo["categories"] == json.load(open(tiny_data["train"]["ann"]))["categories"]
    step1 = json.load(open(out / "step1" / "config.json"))
    assert step1["recipe"] == "imitation" and step1["imitation_mask"] == "boxes"
    assert step1["train_ann"] == str(out / "pseudo_labels.json")
    records = [r for r in read_jsonl(str(out / "step1" / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(records) == 2 and all("distill_imitation" in r for r in records)
    step2 = json.load(open(out / "step2" / "config.json"))
    assert step2["init"] == str(out / "step1" / "model_final.pth") and step2["recipe"] == "none"
    assert step2["labeled_fraction"] == 0.5 and step2["train_ann"] == tiny_data["train"]["ann"]
    records = [r for r in read_jsonl(str(out / "step2" / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(records) == 2 and not any(k.startswith("distill_") for r in records for k in r)
    assert (out / "step2" / "model_final.pth").is_file()


def test_step_two_alone_fine_tunes_a_given_student(tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    assert _two_step(tiny_data, out, "--arch", TEACHER, "--steps", 2, "--step1-init", teacher_ckpt,
                     "--step2-iterations", 1) == 0
    start = torch.load(teacher_ckpt, weights_only=False)["model_state"]
    assert json.load(open(out / "step2" / "config.json"))["init"] == teacher_ckpt
    assert not (out / "step1").exists() and (out / "step2" / "model_final.pth").is_file()
    # Fine-tuning started from the given weights (a frozen-in-time buffer shows it).
    end = torch.load(out / "step2" / "model_final.pth", weights_only=False)["model_state"]
    key = "backbone.body.bn1.num_batches_tracked"
    assert int(end[key]) == int(start[key]) + 1


def test_step_two_without_a_step_one_student_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="step-1 student"):
        _two_step(tiny_data, tmp_path / "run", "--steps", 2)


def test_pseudo_labels_with_other_categories_are_refused(tiny_data, teacher_ckpt, tmp_path):
    bad = json.load(open(tiny_data["train"]["ann"]))
    bad["categories"] = bad["categories"][:2]
    bad["annotations"] = [a for a in bad["annotations"] if a["category_id"] <= 2]
    (tmp_path / "p.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="categories differ"):
        _two_step(tiny_data, tmp_path / "run", "--pseudo-ann", tmp_path / "p.json", "--teacher", teacher_ckpt)


def test_labeled_fraction_is_reproducible_and_independent_of_seed(tiny_data):
    a = labeled_image_indices(10, 0.2, seed=0)
    assert a == labeled_image_indices(10, 0.2, seed=0) and len(a) == 2 and a != labeled_image_indices(10, 0.2, 1)
    ds = keep_labeled_fraction(CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"]), 0.5, 0)
    assert len(ds) == 4 and len(ds.boxes) == len(ds.labels) == 4
    with pytest.raises(ValueError, match="labeled-fraction"):
        labeled_image_indices(10, 0.0, 0)


def test_a_step_that_stops_is_named(tiny_data, teacher_ckpt, tmp_path, monkeypatch, capsys):
    from kdtrain import two_step
    from kdtrain.nonfinite import NonFiniteError

    def stops(cfg, log=print):
        raise NonFiniteError("iteration 3: the distillation loss imitation is not finite (NaN or Inf)")

    monkeypatch.setattr(two_step, "train", stops)
    args = train_args(tiny_data, tmp_path / "run", "--no-eval", "--pseudo-ann", tiny_data["train"]["ann"])
    assert main(["two-step", *args[1:]]) == 1
    assert capsys.readouterr().err.strip() == ("python -m kdtrain two-step: stopped: step 1: iteration 3: the "
                                               "distillation loss imitation is not finite (NaN or Inf)")
