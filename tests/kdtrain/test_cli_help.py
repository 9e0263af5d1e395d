"""Help texts: every flag explained, each default shown once and taken from the config dataclasses."""

import argparse
import dataclasses
import re

import pytest

from kdtrain.architectures import ARCHITECTURES
from kdtrain.cli import build_parser, main, subcommand_parsers
from kdtrain.config import CACHE_DIR_ENV, DemoConfig, PseudoLabelConfig, TrainConfig, TwoStepConfig
from kdtrain.config import EfficacyConfig, PlotConfig, VisualizeConfig

# Where each subcommand's defaults live, first match wins; eval/predict batch sizes are the evaluation's.
SOURCES = {
    "train": [TrainConfig],
    "two-step": [TwoStepConfig, TrainConfig],
    "pseudo-label": [PseudoLabelConfig, TrainConfig],
    "demo": [DemoConfig],
    "efficacy": [EfficacyConfig],
    "eval": [TrainConfig],
    "predict": [TrainConfig],
    "visualize": [VisualizeConfig],
    "plot": [PlotConfig],
}
RENAMED = {("eval", "batch_size"): "eval_batch_size", ("predict", "batch_size"): "eval_batch_size"}
GENERATED = re.compile(r" \(default: ([^()]*)\)$")


def _flags(command):
    parser = subcommand_parsers(build_parser())[command]
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _dataclass_default(command, dest):
    name = RENAMED.get((command, dest), dest)
    for config in SOURCES[command]:
        fields = {f.name: f for f in dataclasses.fields(config)}
        if name in fields:
            f = fields[name]
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.MISSING


def _shown(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@pytest.mark.parametrize("command", list(SOURCES))
def test_every_flag_has_help_and_its_default_once_from_the_dataclass(command):
    for action in _flags(command):
        flag = action.option_strings[0]
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {flag} has no help"
        match = GENERATED.search(action.help)
        rest = GENERATED.sub("", action.help)
        assert "default" not in rest, f"{command} {flag}: a default written by hand: {action.help!r}"
        expected = _dataclass_default(command, action.dest)
        if action.required or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert match is None, f"{command} {flag}: {action.help!r}"
        elif expected is not dataclasses.MISSING and expected not in (None, [], ()):
            assert match and match.group(1) == _shown(expected), f"{command} {flag}: {action.help!r}"
        elif match:  # a default that lives in the parser only (predict --score-threshold)
            assert expected is dataclasses.MISSING and match.group(1) == _shown(action.default), flag


@pytest.mark.parametrize("command", list(SOURCES))
def test_formatted_help_says_each_thing_once(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: [])" not in text
    assert text.count(ARCHITECTURES[0]) <= 1 + (command in ("train", "two-step"))  # the list, and --arch's default
    assert not re.search(r"\{[^}]*" + ARCHITECTURES[1], text), "architecture choices printed inline"
    if command in ("train", "two-step"):
        assert "--arch ARCH" in text and "--teacher-arch ARCH" in text


def test_eval_is_described():
    assert "COCO box metrics" in subcommand_parsers(build_parser())["eval"].description


def test_demo_cache_dir_default_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert DemoConfig().cache_dir == str(tmp_path / "cache")
    parser = build_parser()
    assert parser.parse_args(["demo"]).cache_dir == str(tmp_path / "cache")
    assert CACHE_DIR_ENV in subcommand_parsers(parser)["demo"].format_help()
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert DemoConfig().cache_dir.endswith(".cache/kdtrain")


def test_demo_output_dir_follows_the_variant():
    assert DemoConfig().output_dir == "kdtrain_demo"
    assert DemoConfig(variant="label-scarce").output_dir == "kdtrain_demo_label_scarce"
    assert DemoConfig(output_dir="x", variant="label-scarce").output_dir == "x"
