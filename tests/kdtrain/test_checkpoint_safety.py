"""Checkpoints load with weights_only=True: a planted payload never runs, at any entry point."""

import glob
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdtrain import checkpoint as ckpt_io
from kdtrain.cli import main
from kdtrain.errors import UsageError

from kdtrain_testutil import REPO, train_args


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _poisoned_copy(source, tmp_path, marker):
    """A valid kdtrain checkpoint (it would evaluate normally) with one extra entry that runs code."""
    ckpt = ckpt_io.load(source)
    ckpt["notes"] = _Payload(marker)
    path = tmp_path / "poisoned.pth"
    torch.save(ckpt, path)
    return path


def test_load_refuses_a_payload_naming_the_file_and_the_type(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model_state": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
    with pytest.raises(UsageError, match=rf"refused to load checkpoint {path}: it holds builtins\.exec"):
        ckpt_io.load(str(path))
    assert not marker.exists()


def test_what_kdtrain_writes_loads_and_restores_the_rng(tmp_path):
    path = tmp_path / "ckpt.pth"
    ckpt_io.atomic_save({"rng": ckpt_io.rng_state(), "config": {"lr": 0.02, "steps": [1, 2]}}, str(path))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt_io.set_rng_state(ckpt_io.load(str(path))["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_numpy_arrays_are_refused_by_name(tmp_path):
    """numpy's own RNG state holds an ndarray: kdtrain writes it as plain types, and loads nothing else."""
    path = tmp_path / "numpy.pth"
    torch.save({"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, path)
    with pytest.raises(UsageError, match=rf"refused to load checkpoint {path}: it holds .*numpy"):
        ckpt_io.load(str(path))


def test_kdtrain_reads_checkpoints_only_through_checkpoint_load():
    offenders = []
    for path in glob.glob(os.path.join(REPO, "kdtrain", "**", "*.py"), recursive=True):
        if os.path.basename(path) != "checkpoint.py" and "torch.load(" in open(path).read():
            offenders.append(path)
    assert not offenders  # every entry point goes through the weights_only loader


def _entry_points(tiny_data, out, ckpt):
    val, train = tiny_data["val"], tiny_data["train"]
    return {
        "eval": ["eval", "--checkpoint", ckpt, "--images", val["images"], "--ann", val["ann"]],
        "predict": ["predict", "--checkpoint", ckpt, "--images", val["images"], "--output", out / "p.json"],
        "pseudo-label": ["pseudo-label", "--teacher", ckpt, "--images", val["images"], "--output", out / "pl.json"],
        "train --teacher": train_args(tiny_data, out / "t", "--teacher", ckpt, "--recipe", "imitation"),
        "train --init": train_args(tiny_data, out / "i", "--init", ckpt),
        "train --resume": train_args(tiny_data, out / "r", "--resume", ckpt),
        "two-step --step1-init": ["two-step", "--steps", "2", "--step1-init", ckpt, *train_args(tiny_data, out / "s")[1:]],
    }


def test_no_entry_point_runs_a_planted_payload_in_process(tiny_data, teacher_ckpt, tmp_path, capsys):
    """Every entry point through kdtrain.cli.main; the slow test below runs each as its own process."""
    marker = tmp_path / "ran"
    poisoned = _poisoned_copy(teacher_ckpt, tmp_path, marker)
    for name, args in _entry_points(tiny_data, tmp_path, poisoned).items():
        with pytest.raises(SystemExit) as e:
            main([*map(str, args), "--no-progress"])
        err = capsys.readouterr().err
        assert not marker.exists(), f"{name}: the payload ran"
        assert e.value.code == 2, (name, err)
        assert f"refused to load checkpoint {poisoned}" in err and "builtins.exec" in err, (name, err)


@pytest.mark.slow
def test_no_entry_point_runs_a_planted_payload(tiny_data, teacher_ckpt, tmp_path):
    marker = tmp_path / "ran"
    poisoned = _poisoned_copy(teacher_ckpt, tmp_path, marker)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, args in _entry_points(tiny_data, tmp_path, poisoned).items():
        result = subprocess.run([sys.executable, "-m", "kdtrain", *map(str, args), "--no-progress"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert not marker.exists(), f"{name}: the payload ran"
        assert result.returncode == 2, (name, result.stderr)
        assert f"refused to load checkpoint {poisoned}" in result.stderr and "builtins.exec" in result.stderr, \
            (name, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
