"""Every image of a run decoded once before it starts, so a corrupt or truncated file fails at once, named.

Without it a bad file stops training at the iteration that loads it, or the final evaluation after
all the training. Images that decoded are remembered by (path, size, mtime, ctime, inode) in
``KDTRAIN_CACHE_DIR/checked_images.json`` (default ~/.cache/kdtrain): one cache for every run folder
and for read-only datasets, so a rerun only decodes files that changed. Size and mtime alone are not
enough: a copy or restore that keeps them (cp -p, rsync -t, touch -r) puts other bytes under the
same stamp; the inode-change time (ctime) moves with every write and rename and no tool can set it.
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from kdtrain.config import default_cache_dir
from kdtrain.data.coco_json import DatasetError
from kdtrain.data.images import check_image

CACHE_FILE = "checked_images.json"
MAX_THREADS = 4  # decoding releases the GIL; more threads only compete with training for the cores
SHOW_FAILURES = 5


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _decode(path: str) -> str | None:
    """None if the whole image decodes and can be read as intensities (kdtrain/data/images.py), else why not."""
    try:
        with Image.open(path) as im:
            im.load()
            return check_image(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...: all mean unusable
        return f"{type(e).__name__}: {e}"


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: everything is checked again
        return {}


def _write_cache(path: str, checked: dict) -> None:
    """Merge into the file on disk (another process may have added to it) and replace it atomically."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cache = {**_read_cache(path), **checked}
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs the next run a new check


def check_images(paths: list[str], progress: bool = True, cache_dir: str | None = None) -> None:
    """DatasetError naming every file of ``paths`` that does not decode; the others are cached."""
    cache_path = os.path.join(cache_dir or default_cache_dir(), CACHE_FILE)
    cache = _read_cache(cache_path)
    stamps = {os.path.abspath(p): _stamp(p) for p in paths}
    todo = [p for p, stamp in stamps.items() if cache.get(p) != stamp]
    if not todo:
        return
    failed, checked = [], {}
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, os.cpu_count() or 1, len(todo))) as pool:
        bar = tqdm(pool.map(_decode, todo), total=len(todo), desc="check images", disable=not progress, leave=False)
        for path, error in zip(todo, bar):
            if error is None:
                checked[path] = stamps[path]
            else:
                failed.append(f"{path} ({error})")
    _write_cache(cache_path, checked)
    if failed:
        more = f"; and {len(failed) - SHOW_FAILURES} more" if len(failed) > SHOW_FAILURES else ""
        raise DatasetError(f"cannot read image{'s' if len(failed) > 1 else ''} "
                           f"{'; '.join(failed[:SHOW_FAILURES])}{more}")
