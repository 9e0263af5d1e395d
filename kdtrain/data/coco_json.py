"""Reading a COCO instances json and checking its entries: each error names the file, the entry and the key."""

from __future__ import annotations

import json
import os

from kdtrain.errors import UsageError


class DatasetError(UsageError):
    """A COCO-format dataset that cannot be used as it is."""


REQUIRED_TOP_KEYS = ("images", "annotations", "categories")


def load_coco_json(ann_file: str) -> dict:
    if not os.path.isfile(ann_file):
        raise DatasetError(f"annotation file not found: {ann_file}")
    with open(ann_file, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"corrupt json in {ann_file}: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be an object with keys {list(REQUIRED_TOP_KEYS)}")
    for key in REQUIRED_TOP_KEYS:
        if key not in data:
            raise DatasetError(f"{ann_file}: missing key {key!r}")
        if not isinstance(data[key], list):
            raise DatasetError(f"{ann_file}: key {key!r} must be a list")
    return data


def entries(data: dict, key: str, ann_file: str):
    """(where, entry) of each element of ``data[key]``, which must be a json object."""
    for i, entry in enumerate(data[key]):
        where = f"{ann_file}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} must be an object, got {entry!r:.80}")
        yield where, entry


def require(entry: dict, key: str, where: str):
    if key not in entry:
        raise DatasetError(f"{where}: missing key {key!r}")
    return entry[key]


def integer(entry: dict, key: str, where: str) -> int:
    """An id field: a json integer (3 or 3.0), never 1.7, "3" or true, which would silently become another id."""
    value = require(entry, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise DatasetError(f"{where}: {key!r} must be an integer, got {value!r}")
    return int(value)


def optional_size(entry: dict, key: str, where: str):
    """Image width or height: absent/null, or a positive number."""
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DatasetError(f"{where}: {key!r} must be a positive number, got {value!r}")
    return value


def check_unique(seen: dict, value: int, what: str, where: str) -> None:
    """``seen`` maps each value to the entry that had it first."""
    if value in seen:
        raise DatasetError(f"{where}: duplicate {what} {value} (also {seen[value]})")
    seen[value] = where
