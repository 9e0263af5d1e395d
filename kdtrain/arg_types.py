"""Argument types shared by kdtrain's command lines (kdtrain/cli.py and kdtrain/yolo/cli.py)."""

from __future__ import annotations

import argparse
import json


def key_value(text: str) -> tuple:
    """KEY=VALUE, the value read as JSON where it parses (numbers, lists, booleans) and as a string otherwise."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # plain string
    return key, value
