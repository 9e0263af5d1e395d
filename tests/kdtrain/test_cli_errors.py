"""CLI misuse: the usage line and one message, exit code 2, no traceback; --debug shows it; bugs keep theirs."""

import os
import subprocess
import sys

import pytest

from kdtrain.cli import main
from kdtrain.commands import train as train_command

from kdtrain_testutil import REPO


def _kdtrain(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "kdtrain", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _misuse_cases(tmp_path, tiny_data):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [1\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 1\n")
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("lr: fast\n")
    corrupt_ckpt = tmp_path / "corrupt.pth"
    corrupt_ckpt.write_bytes(b"not a checkpoint")
    corrupt_json = tmp_path / "corrupt.json"
    corrupt_json.write_text('{"images": [')
    images, ann = tiny_data["val"]["images"], tiny_data["val"]["ann"]
    return [
        (["train"], "train", "training needs --train-images and --train-ann"),
        (["eval", "--checkpoint", "missing.pth", "--images", images, "--ann", ann], "eval",
         "--checkpoint: no such file: missing.pth"),
        (["eval", "--checkpoint", corrupt_ckpt, "--images", tmp_path / "nowhere", "--ann", ann], "eval",
         "--images: no such folder"),
        (["eval", "--checkpoint", corrupt_ckpt, "--images", images, "--ann", ann], "eval",
         "cannot read checkpoint"),
        (["train", "--config", tmp_path / "none.yaml"], "train", "--config: no such file"),
        (["train", "--config", bad_yaml], "train", "cannot parse config file"),
        (["train", "--config", unknown], "train", "unknown option 'learning_rate'"),
        (["train", "--config", wrong_type], "train", "lr must be of type float"),
        (["train", "--train-images", images, "--train-ann", corrupt_json], "train", "corrupt json"),
        (["train", "--train-images", images, "--train-ann", ann, "--recipe", "hint"], "train", "unknown recipe"),
        (["train", "--train-images", images, "--train-ann", ann, "--steps", "3"], "train", "unrecognized"),
        (["two-step", "--steps", "3"], "two-step", "--steps: steps are 1, 2 or 1,2"),
        (["predict", "--checkpoint", corrupt_ckpt, "--images", images], "predict", "required: --output"),
        (["demo", "--seeds", "0,x"], "demo", "comma-separated integers"),
    ]


def _is_usage_and_one_message(err: str, args, command: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: python -m kdtrain {command} "), (args, err)
    assert lines[1].startswith(f"python -m kdtrain {command}: error: ") and message in err, (args, err)
    assert len(lines) == 2, (args, err)


def test_every_misuse_is_the_usage_line_and_one_message_in_process(tiny_data, tmp_path, monkeypatch, capsys):
    """Through kdtrain.cli.main; the slow test below runs each case as its own process."""
    monkeypatch.chdir(tmp_path)
    for args, command, message in _misuse_cases(tmp_path, tiny_data):
        with pytest.raises(SystemExit) as e:  # any other exception (a traceback) fails the test
            main(list(map(str, args)))
        err = capsys.readouterr().err
        assert e.value.code == 2, (args, err)
        _is_usage_and_one_message(err, args, command, message)


@pytest.mark.slow
def test_every_misuse_is_the_usage_line_and_one_message(tiny_data, tmp_path):
    for args, command, message in _misuse_cases(tmp_path, tiny_data):
        result = _kdtrain(*args, cwd=tmp_path)
        err = result.stderr
        assert result.returncode == 2, (args, err)
        assert "Traceback" not in err, (args, err)
        _is_usage_and_one_message(err, args, command, message)


def test_debug_shows_the_traceback(tmp_path):
    result = _kdtrain("--debug", "eval", "--checkpoint", "missing.pth", "--images", tmp_path, "--ann", "a.json",
                      cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "MissingFileError: --checkpoint: no such file" in result.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug, not a usage error")

    monkeypatch.setattr(train_command, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["train"])


def test_user_errors_still_are_value_errors_for_callers(tmp_path):
    from kdtrain.config import TrainConfig
    from kdtrain.engine import train

    with pytest.raises(ValueError, match="training needs"):
        train(TrainConfig())
    with pytest.raises(FileNotFoundError, match="--teacher: no such file"):
        train(TrainConfig(train_images=str(tmp_path), train_ann=__file__, teacher=str(tmp_path / "t.pth")))
