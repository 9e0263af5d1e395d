"""Resume is exact and leaves the run folder clean; checkpoints it cannot continue are refused."""

import json
import os

import pytest
import torch

from kdtrain import checkpoint as ckpt_io
from kdtrain.cli import main
from kdtrain.errors import UsageError
from kdtrain.metrics_log import read_jsonl
from kdtrain.resume import load_training_state, restart_metrics

from kdtrain_testutil import Killed, kill_after_checkpoint, train_args


def _train_records(out):
    return [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] == "train"]


def test_mid_epoch_resume_is_bit_exact_and_cleans_up(tiny_data, tmp_path, monkeypatch, capsys):
    # 8 images in batches of 2: the checkpoint at iteration 3 is in the middle of the first epoch.
    def args(out):
        return train_args(tiny_data, out, "--iterations", 5, "--checkpoint-every", 3, "--no-eval", "--hflip", 0.5)

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(args(whole)) == 0
    with monkeypatch.context() as m:
        kill_after_checkpoint(m, 3)
        with pytest.raises(Killed):
            main(args(parts))
    with open(parts / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iteration": 4, "lo')  # killed while logging
    (parts / ".tmp_k1ll3d.pth").write_bytes(b"half a checkpoint")
    assert main(args(parts) + ["--resume"]) == 0
    log = capsys.readouterr().out
    assert "ignoring its torn last line" in log and "removed .tmp_k1ll3d.pth" in log
    assert not [n for n in os.listdir(parts) if n.startswith(".tmp_")]

    a = torch.load(whole / "model_final.pth", weights_only=True)["model_state"]
    b = torch.load(parts / "model_final.pth", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop_time = lambda r: {k: v for k, v in r.items() if k != "seconds_per_iter"}  # noqa: E731
    assert [drop_time(r) for r in _train_records(parts)] == [drop_time(r) for r in _train_records(whole)]
    assert [r["iteration"] for r in _train_records(parts)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("resume", [[], ["--resume"]])  # fresh, or --resume with no checkpoint yet
def test_a_fresh_start_replaces_the_records_of_a_run_killed_before_its_first_checkpoint(
        tiny_data, tmp_path, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "iteration": i, "loss": 9.0}) + "\n"
                                               for i in (1, 2, 3)))
    assert main(train_args(tiny_data, out, "--iterations", 2, "--no-eval", *resume)) == 0
    records = _train_records(out)
    assert [r["iteration"] for r in records] == [1, 2] and all(r["loss"] != 9.0 for r in records)


def _fake_training_checkpoint(path, iteration, drop=()):
    state = {"model_spec": {}, "model_state": {}, "distill_state": {}, "optimizer": {"state": {}, "param_groups": []},
             "scheduler": {}, "scaler": {}, "iteration": iteration, "rng": {}}
    ckpt_io.atomic_save({k: v for k, v in state.items() if k not in drop}, str(path))
    return str(path)


def test_a_checkpoint_beyond_the_new_total_is_refused(tmp_path):
    path = _fake_training_checkpoint(tmp_path / "c.pth", 10)
    with pytest.raises(UsageError, match=r"c.pth is at iteration 10, beyond this run's 3 iterations"):
        load_training_state(path, 3)
    assert load_training_state(path, 10)["iteration"] == 10  # resuming a run that is done is allowed


def test_resume_of_an_exported_model_says_to_use_init(tiny_data, teacher_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(train_args(tiny_data, tmp_path / "run", "--iterations", 2, "--resume", teacher_ckpt))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "is an exported model, not a training checkpoint" in err and f"use --init {teacher_ckpt}" in err


def test_resume_beyond_total_is_refused_by_train(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_data, out, "--iterations", 2, "--no-eval", "--keep-checkpoints")) == 0
    with pytest.raises(SystemExit) as e:
        main(train_args(tiny_data, out, "--iterations", 1, "--no-eval", "--resume"))
    assert e.value.code == 2 and "at iteration 2, beyond this run's 1 iterations" in capsys.readouterr().err


def test_a_damaged_line_inside_the_log_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iter\n{"iteration": 3}\n')
    with pytest.raises(UsageError, match="metrics.jsonl: line 2 is not a json record"):
        read_jsonl(str(path))


def test_restart_drops_what_was_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "iteration": 1}, {"kind": "train", "iteration": 2}, {"kind": "eval", "iteration": 2},
               {"kind": "train", "iteration": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    restart_metrics(str(path), 2)  # the evaluation of iteration 2 ran after its checkpoint: it is redone
    assert read_jsonl(str(path)) == records[:2]
