"""The distillation check (kdtrain/distill/check.py): what it stops, what it warns about, what it logs."""

import json

import pytest
import torch

from kdtrain_testutil import STUDENT, TEACHER, tiny_spec, train_args

from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection
from kdtrain.distill.check import NEGLIGIBLE, SWAMP, gradient_ratios, term_warnings
from kdtrain.engine import export_student
from kdtrain.models import build_detector


def check_args(data, teacher, *extra):
    """`python -m kdtrain check` of a tiny imitation run (train's flags, `check` instead of `train`)."""
    args = train_args(data, "unused", "--arch", STUDENT, "--recipe", "imitation", "--teacher", teacher, *extra)
    return ["check", *args[1:]]


def run_check(capsys, args) -> tuple[int, list[str], str]:
    """(exit code, the [check] lines printed, stderr)."""
    try:
        code = main(args)
    except SystemExit as e:  # a usage error: argparse exits 2 with the message on stderr
        code = e.code
    out = capsys.readouterr()
    return code, [line for line in out.out.splitlines() if line.startswith("[check]")], out.err


def error_line(err: str) -> str:
    """The one message line argparse prints under the usage line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err  # usage + one line
    return lines[1]


def test_a_trained_teacher_passes_and_the_pairs_and_terms_are_listed(tiny_data, teacher_ckpt, capsys):
    code, lines, err = run_check(capsys, check_args(tiny_data, teacher_ckpt))
    assert code == 0, err
    text = "\n".join(lines)
    assert "a random copy of its network" in text
    assert "-> teacher" in text and "adaptation 1x1 conv" in text
    assert "imitation: first value" in text and "x the detection loss's" in text


def test_an_untrained_teacher_stops_the_run_in_one_line(tiny_data, random_teacher_ckpt, capsys):
    code, _, err = run_check(capsys, check_args(tiny_data, random_teacher_ckpt))
    assert code == 2
    line = error_line(err)
    assert "no better than a random copy of its network" in line and "--trust-teacher" in line


def test_trust_teacher_runs_with_an_untrained_teacher(tiny_data, random_teacher_ckpt, capsys):
    code, lines, err = run_check(capsys, check_args(tiny_data, random_teacher_ckpt, "--trust-teacher"))
    assert code == 0, err
    assert any("running anyway" in line for line in lines)


def test_a_teacher_of_another_class_count_stops_the_run_naming_both(tiny_data, tmp_path, capsys):
    spec = tiny_spec(TEACHER, num_classes=3)  # the data has 5 classes (+ background)
    path = str(tmp_path / "other_task.pth")
    export_student(build_detector(spec), spec, CocoDetection(tiny_data["train"]["images"],
                                                             tiny_data["train"]["ann"]), path)
    code, _, err = run_check(capsys, check_args(tiny_data, path))
    assert code == 2
    line = error_line(err)
    assert "the teacher predicts 2 classes, the data has 5" in line


def test_a_weight_100x_too_large_warns_with_the_weight_to_use(tiny_data, teacher_ckpt, capsys):
    code, lines, _ = run_check(capsys, check_args(tiny_data, teacher_ckpt))
    assert code == 0
    ratio = float(next(line for line in lines if "imitation: first value" in line).split("gradient ")[1].split("x")[0])
    weight = 100 * SWAMP / ratio  # 100x a weight that would just reach the swamp bound
    code, lines, _ = run_check(capsys, check_args(tiny_data, teacher_ckpt, "--distill-weights", f"imitation={weight}"))
    assert code == 0
    warning, = [line for line in lines if "warning" in line]
    assert "imitation will swamp the detection loss" in warning and "try --distill-weights imitation=" in warning
    suggested = float(warning.split("imitation=")[1].split(" ")[0])
    assert suggested < weight / 50  # the suggestion brings it back to the automatic target ratio


def test_a_term_wired_to_nothing_and_a_negligible_one_warn():
    w = torch.nn.Parameter(torch.ones(3))
    detection = (w * torch.arange(3.0)).sum()
    raw = {"dead": (torch.ones(3) * 2).sum(),                       # reaches no student parameter
           "zero": (w * 0).sum(),                                   # reaches it with a zero gradient
           "tiny": (w * torch.arange(3.0)).sum(),                   # same gradient as detection, tiny weight
           "fine": (w * torch.arange(3.0)).sum(),
           "nan": (w * float("nan")).sum()}
    weights = {"dead": 1.0, "zero": 1.0, "tiny": NEGLIGIBLE / 10, "fine": 1.0, "nan": 1.0}
    terms = gradient_ratios(detection, raw, weights, [w])
    assert terms["fine"]["ratio"] == pytest.approx(1.0)
    assert terms["dead"]["ratio"] is None and terms["zero"]["ratio"] == 0.0
    warnings = term_warnings(terms)
    assert len(warnings) == 4  # all but "fine", one line each
    assert any(line.startswith("warning: dead gives the student no gradient") for line in warnings)
    assert any(line.startswith("warning: zero gives the student no gradient") for line in warnings)
    assert any(line.startswith("warning: tiny does almost nothing") for line in warnings)
    assert any(line.startswith("warning: nan is nan") for line in warnings)


def test_a_distilled_run_logs_the_check_and_the_gradient_ratios(tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_data, out, "--arch", STUDENT, "--recipe", "imitation", "--teacher", teacher_ckpt,
                           "--iterations", "4", "--grad-ratio-every", "2", "--no-eval", "--distill-warmup", "0")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    check, = [r for r in records if r["kind"] == "distill_check"]
    assert check["teacher"]["loss"]["teacher"] < check["teacher"]["loss"]["random_teacher"]
    assert check["pairs"] and check["terms"]["imitation"]["ratio"] > 0
    ratios = [r for r in records if r["kind"] == "grad_ratio"]
    assert [r["iteration"] for r in ratios] == [0, 2]  # the 0-based step index of the forward that measured it
    assert all(r["ratios"]["imitation"] > 0 for r in ratios)
