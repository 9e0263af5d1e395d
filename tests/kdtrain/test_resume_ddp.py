"""A run killed mid-way resumes to completion; DDP with 2 CPU processes on gloo."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdtrain.cli import main
from kdtrain.metrics_log import read_jsonl

from kdtrain_testutil import REPO, train_args


def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow  # a real SIGKILL; test_resume_clean.py kills in process, fast
def test_kill_then_resume_completes(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tiny_data, out, "--iterations", 10, "--checkpoint-every", 2, "--no-eval", "--threads", 1)
    proc = subprocess.Popen([sys.executable, "-m", "kdtrain", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint_last.pth"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), f"no checkpoint appeared: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["iteration"]
    assert 2 <= killed_at < 10
    # No temporary file is left in a state that could be mistaken for a checkpoint.
    assert all(not name.endswith(".pth") or name.startswith(("checkpoint_last", ".tmp_")) for name in os.listdir(out))

    assert main(args + ["--resume"]) == 0
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 10
    assert not ckpt.exists(), "a finished run keeps no checkpoint (without --keep-checkpoints)"
    iterations = [r["iteration"] for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] == "train"]
    assert iterations == list(range(1, 11)), "records after the checkpoint are redone once, none lost or doubled"
    with pytest.raises(SystemExit) as e:  # nothing to resume: said, instead of silently training again
        main(args + ["--resume"])
    assert e.value.code == 2 and "has finished" in capsys.readouterr().err


def test_resume_restores_optimizer_scheduler_and_rng(tiny_data, tmp_path):
    out = tmp_path / "run"
    base = train_args(tiny_data, out, "--no-eval", "--checkpoint-every", 2, "--lr-schedule", "step",
                      "--lr-steps", 3, "--lr-warmup", 0, "--keep-checkpoints")
    assert main(base + ["--iterations", "4"]) == 0
    first = torch.load(out / "checkpoint_last.pth", weights_only=False)
    assert main(base + ["--iterations", "4", "--resume"]) == 0  # nothing left: resumes at 4 and stops
    again = torch.load(out / "checkpoint_last.pth", weights_only=False)
    assert again["iteration"] == 4
    assert again["scheduler"]["last_epoch"] == first["scheduler"]["last_epoch"] == 4
    assert again["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.1)
    assert torch.equal(again["rng"]["torch"], first["rng"]["torch"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    args = train_args(tiny_data, out, "--iterations", 3, "--device", "cpu", "--threads", 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdtrain", *args]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(str(out / "metrics.jsonl"))
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # rank 0 only writes
    ddp_metrics = json.load(open(out / "eval.json"))
    # Distributed evaluation (2 shards merged on rank 0) equals a single-process one.
    single = tmp_path / "single.json"
    assert main(["eval", "--checkpoint", str(out / "model_final.pth"), "--images", tiny_data["val"]["images"],
                 "--ann", tiny_data["val"]["ann"], "--workers", "0", "--output", str(single), "--no-progress"]) == 0
    single_metrics = json.load(open(single))
    assert ddp_metrics["num_detections"] == single_metrics["num_detections"]
    assert ddp_metrics["mAP"] == pytest.approx(single_metrics["mAP"], abs=1e-6)
    assert not any(n.startswith(".tmp_") for n in os.listdir(out))
