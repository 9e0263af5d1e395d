"""A run whose loss or gradient goes non-finite says which one, when and what to do; --nonfinite skip skips it."""

import math

import pytest
import torch

from kdtrain import checkpoint as ckpt_io
from kdtrain.cli import main
from kdtrain.config import TrainConfig
from kdtrain.distill import terms
from kdtrain.metrics_log import read_jsonl
from kdtrain.nonfinite import NonFiniteError, culprit, stop_message

from kdtrain_testutil import train_args


class _NaNGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient backward: a term whose backward goes wrong while its loss looks fine."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def _break_imitation(monkeypatch, bad_steps, forward_nan=False):
    """The imitation term's gradient (or, with ``forward_nan``, its loss) is NaN at the 1-based steps given."""
    real, calls = terms.ImitationTerm.forward, []

    def forward(self, ctx, keys=None):
        calls.append(None)  # the first call is the distillation check's, before step 1
        if len(calls) - 1 not in bad_steps:
            return real(self, ctx, keys)
        if forward_nan:
            return {k: v * math.nan for k, v in real(self, ctx, keys).items()}
        return real(self, ctx.with_student_tensors(
            lambda t: _NaNGradient.apply(t) if torch.is_tensor(t) and t.requires_grad else t), keys)

    monkeypatch.setattr(terms.ImitationTerm, "forward", forward)


def _run(tiny_data, teacher_ckpt, out, *extra, debug=False):
    return main(["--debug"] * debug + train_args(tiny_data, out, "--teacher", teacher_ckpt, "--recipe", "imitation",
                                                 "--iterations", 4, "--log-every", 2, "--checkpoint-every", 2,
                                                 "--no-eval", *extra))


def test_a_term_whose_gradient_goes_non_finite_stops_the_run_with_one_line(tiny_data, teacher_ckpt, tmp_path,
                                                                           monkeypatch, capsys):
    _break_imitation(monkeypatch, bad_steps={3})
    out = tmp_path / "run"
    assert _run(tiny_data, teacher_ckpt, out) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("python -m kdtrain train: stopped: iteration 3: the gradient of distillation term "
                          "imitation is not finite"), err
    for advice in ("--distill-weights imitation=0.5", "--distill-warmup (now 0)", "--lr (now 0.01)",
                   f"resume from {out / 'checkpoint_last.pth'} (iteration 2)", "--nonfinite skip"):
        assert advice in err, (advice, err)
    state = ckpt_io.load(str(out / "checkpoint_last.pth"))  # the checkpoint before the bad step, unharmed
    assert state["iteration"] == 2 and all(bool(torch.isfinite(t).all()) for t in state["model_state"].values()
                                           if t.is_floating_point())
    assert [r["iteration"] for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] == "train"] == [2]
    _break_imitation(monkeypatch, bad_steps={1})
    with pytest.raises(NonFiniteError):  # --debug: the exception and its traceback
        _run(tiny_data, teacher_ckpt, tmp_path / "debug", debug=True)


def test_skip_mode_skips_a_bad_step_and_stops_after_too_many_in_a_row(tiny_data, teacher_ckpt, tmp_path,
                                                                      monkeypatch, capsys):
    _break_imitation(monkeypatch, bad_steps={2}, forward_nan=True)
    out = tmp_path / "once"
    assert _run(tiny_data, teacher_ckpt, out, "--nonfinite", "skip") == 0
    records = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] in ("skipped", "train")]
    assert [(r["kind"], r["iteration"]) for r in records] == [("skipped", 2), ("train", 2), ("train", 4)]
    assert records[0]["nonfinite"] == "distill_imitation"
    assert "iteration 2: skipped, the distillation loss imitation is not finite" in capsys.readouterr().out
    final = ckpt_io.load(str(out / "model_final.pth"))["model_state"]
    assert all(bool(torch.isfinite(t).all()) for t in final.values() if t.is_floating_point())

    _break_imitation(monkeypatch, bad_steps={3, 4})
    assert _run(tiny_data, teacher_ckpt, tmp_path / "twice", "--nonfinite", "skip", "--max-skipped-steps", 2) == 1
    err = capsys.readouterr().err
    assert "stopped: iteration 4: the gradient of distillation term imitation is not finite (NaN or Inf) in 2 " \
           "steps in a row (--max-skipped-steps 2)" in err and "(iteration 2)" in err, err


def test_what_went_first_is_named_by_cause():
    nan, one, ok, bad = torch.tensor(math.nan), torch.tensor(1.0), torch.tensor(True), torch.tensor(False)
    assert culprit({"loss_box_reg": nan, "distill_fgd": nan, "loss": nan}, {}) == "distill_fgd"
    assert culprit({"loss_box_reg": nan, "loss": nan}, {"gradient_fgd": bad}) == "loss_box_reg"
    assert culprit({"loss": one}, {"gradient": bad, "gradient_chen_rcn": bad}) == "gradient_chen_rcn"
    assert culprit({"loss": one}, {"gradient": bad, "gradient_fgd": ok}) == "gradient"
    assert culprit({"loss": one}, {"gradient": ok}) is None
    cfg = TrainConfig(lr=0.02, clip_grad=0.0)
    text = stop_message(0, "loss_box_reg", cfg, {}, None)
    assert text.startswith("iteration 1: the detection loss loss_box_reg is not finite (NaN or Inf); try a lower "
                           "--lr (now 0.02) or gradient clipping (--clip-grad, now off)")
    assert "no checkpoint was written before it" in text
    weights = {"chen_rcn_cls": 1.0, "chen_rcn_reg": 0.5}
    assert "--distill-weights chen_rcn_cls=0.5,chen_rcn_reg=0.25" in stop_message(4, "gradient_chen_rcn", cfg,
                                                                                    weights, ("c.pth", 2))
    assert "--distill-weights chen_rcn_reg=0.25" in stop_message(4, "raw_chen_rcn_reg", cfg, weights, None)
