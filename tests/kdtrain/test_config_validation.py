"""Option values of the wrong type or range, and unknown --model-arg names, are refused before training."""

import os
import re

import pytest

from kdtrain.cli import main
from kdtrain.config import RANGES, TrainConfig, check_train_config
from kdtrain.errors import UsageError
from kdtrain.model_args import accepted_model_args, check_model_args

from kdtrain_testutil import STUDENT, TEACHER, TINY_KWARGS


def _refused(tiny_data, tmp_path, capsys, *args):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--train-images", tiny_data["train"]["images"], "--train-ann", tiny_data["train"]["ann"],
              "--output-dir", str(out), "--no-progress", *map(str, args)])
    assert e.value.code == 2
    assert not os.path.exists(out / "metrics.jsonl"), "refused before any training"
    return capsys.readouterr().err


@pytest.mark.parametrize("flag, value, allowed", [
    ("--iterations", 0, "an integer > 0"), ("--iterations", -3, "an integer > 0"),
    ("--batch-size", 0, "an integer > 0"), ("--log-every", 0, "an integer > 0"),
    ("--checkpoint-every", 0, "an integer > 0"), ("--eval-batch-size", -1, "an integer > 0"),
    ("--epochs", 0, "a number > 0"), ("--workers", -1, "an integer >= 0"),
    ("--labeled-fraction", 2, r"a number in \(0, 1\]"), ("--labeled-fraction", 0, r"a number in \(0, 1\]"),
    ("--student-scale", 1.5, r"a number in \(0, 1\]"), ("--hflip", 1.5, r"a probability in \[0, 1\]"),
    ("--lr", -0.1, "a number > 0"), ("--num-classes", 1, "an integer >= 2"),
    ("--lr-steps", 0, "a list of integers > 0"),
])
def test_values_out_of_range_name_the_flag_key_and_range(tiny_data, tmp_path, capsys, flag, value, allowed):
    key = flag[2:].replace("-", "_")
    err = _refused(tiny_data, tmp_path, capsys, flag, value)
    assert re.search(rf"{flag} \(config key {key}\): must be {allowed}.*, got", err), err


@pytest.mark.parametrize("line, message", [
    ("iterations: abc", "iterations must be of type int, got 'abc'"),
    ("checkpoint_every: often", "checkpoint_every must be of type int, got 'often'"),
    ("hflip: 'yes'", "hflip must be of type float, got 'yes'"),
    ("log_every: 0", "--log-every (config key log_every): must be an integer > 0, got 0"),
    ("batch_size: 1.5", "batch_size must be of type int, got 1.5"),
])
def test_config_file_values_name_the_key_and_type(tiny_data, tmp_path, capsys, line, message):
    config = tmp_path / "c.yaml"
    config.write_text(line + "\n")
    assert message in _refused(tiny_data, tmp_path, capsys, "--config", config)


def test_python_api_values_are_type_checked_too():
    with pytest.raises(UsageError, match="TrainConfig: iterations must be of type int, got 'abc'"):
        check_train_config(TrainConfig(iterations="abc"), need_data=False)
    with pytest.raises(UsageError, match="--batch-size .* must be an integer > 0, got 0"):
        check_train_config(TrainConfig(batch_size=0), need_data=False)


def test_every_range_rule_has_a_field():
    from kdtrain.config import EfficacyConfig, PseudoLabelConfig, TwoStepConfig

    fields = {f for config in (TrainConfig, PseudoLabelConfig, TwoStepConfig, EfficacyConfig)
              for f in config.__dataclass_fields__}
    assert set(RANGES) <= fields


def test_unknown_model_arg_is_refused_before_training(tiny_data, tmp_path, capsys):
    err = _refused(tiny_data, tmp_path, capsys, "--iterations", 1, "--model-arg", "no_such_arg=1")
    assert f"--model-arg no_such_arg: not an argument of {STUDENT} (FasterRCNN)" in err
    assert "rpn_pre_nms_top_n_train" in err  # the accepted names are listed


@pytest.mark.parametrize("arch, name, ok", [
    (STUDENT, "box_batch_size_per_image", True),
    (STUDENT, "trainable_backbone_layers", True),      # torchvision's builder takes it
    (TEACHER, "trainable_backbone_layers", False),     # kdtrain composes this one: FasterRCNN would drop it
    (STUDENT, "size_divisible", True),                 # GeneralizedRCNNTransform's, through **kwargs
    (STUDENT, "anchor_sizes", True),                   # kdtrain's own
    ("retinanet_resnet50_fpn", "topk_candidates", True),
    ("retinanet_resnet50_fpn", "rpn_pre_nms_top_n_train", False),  # a Faster R-CNN argument
    ("fcos_resnet50_fpn", "center_sampling_radius", True),
    (STUDENT, "num_classes", False),                   # set by kdtrain from --num-classes
    (STUDENT, "weights", False),
])
def test_model_args_are_the_constructor_arguments(arch, name, ok):
    assert (name in accepted_model_args(arch)) == ok
    if ok:
        check_model_args(arch, {name: 1})
    else:
        with pytest.raises(UsageError, match=f"--model-arg {name}: not an argument of {arch}"):
            check_model_args(arch, {name: 1})


def test_the_tests_own_model_args_are_accepted():
    check_model_args(STUDENT, TINY_KWARGS)
    check_model_args(TEACHER, TINY_KWARGS)
