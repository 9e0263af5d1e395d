"""Command line: ``python -m kdtrain [--debug] [COMMAND] ...``; no COMMAND runs the demo.

Each subcommand is one module of kdtrain/commands/ (its parser and its run). This module wires them,
checks kdtrain's third-party modules are installed, and turns a user error into one line and the
usage (exit 2), and a run that stopped (RunStopped) into its one line (exit 1). It imports no torch, so
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from kdtrain.commands import (check, demo, efficacy, eval, plot, predict, pseudo_label, train, two_step, visualize,
                              yolo)
from kdtrain.errors import RunStopped, UsageError

COMMANDS = (train, check, eval, predict, pseudo_label, two_step, demo, efficacy, visualize, plot, yolo)  # --help order

EXTRA = "kdops[train]"
# import name -> package name on the index: kdops needs only torch, kdtrain also needs the extra
DEPENDENCIES = {"torch": "torch", "torchvision": "torchvision", "pycocotools": "pycocotools", "tqdm": "tqdm",
                "matplotlib": "matplotlib", "yaml": "pyyaml", "PIL": "pillow", "numpy": "numpy"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses the name
        return False
    except ValueError:  # in sys.modules without a __spec__: present all the same
        return True


def missing_dependency() -> str | None:
    """One line naming the first module kdtrain cannot find and what to install, or None.

    Checked before a command starts (without importing anything), so a missing package stops
    it at once instead of after minutes of training, e.g. at the plot.
    """
    for module, package in DEPENDENCIES.items():
        if not _installed(module):
            name = package if package == module else f"{package} (import name {module})"
            return f'kdtrain needs {name}, which is not installed: pip install "{EXTRA}"'
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdtrain",
        description="Knowledge-distillation trainer for torchvision detectors (losses from kdops). "
                    "With no subcommand it runs the built-in offline demo.",
        epilog="python -m kdtrain COMMAND --help lists the flags of a command.")
    parser.add_argument("--debug", action="store_true",
                        help="on a usage error (bad flag value, missing file) or a stopped run, show the traceback too")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict:
    """{name: parser} of the subcommands, aliases included (argparse keeps them in its subparsers action)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # no subcommand: the demo
        args, extra = parser.parse_known_args([*argv, "demo"])
    command_parser = subcommand_parsers(parser)[args.command]
    if extra:  # said with the subcommand's usage line, not the top-level one
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    missing = missing_dependency()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except UsageError as e:
        if args.debug:
            raise
        command_parser.error(str(e))  # usage line, message, exit code 2
    except RunStopped as e:
        if args.debug:
            raise
        print(f"{command_parser.prog}: stopped: {e}", file=sys.stderr)
        return 1
