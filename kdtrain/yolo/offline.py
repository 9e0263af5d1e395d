"""Import ultralytics without touching the network, or say in one line that it is missing.

Ultralytics looks up DNS at import (``is_online``), asks for Arial.ttf whenever it checks a dataset
(``check_font``: an HTTP HEAD even with plots off), loads yolo11n.pt for its AMP check and reports
events and errors when online. Here: YOLO_OFFLINE=1 before the import (ONLINE is False, so no events,
error reports or pip auto-updates), a settings folder of kdtrain's own unless YOLO_CONFIG_DIR is set,
with the integrations (ClearML, Comet, DVC, MLflow, Ray Tune, ...) off, and matplotlib's DejaVu Sans
saved there under the names check_font looks for. The trainer keeps amp off (no AMP check) and plots off.
ULTRALYTICS_SAFE_LOAD=1 (unless set otherwise) makes ultralytics load checkpoints with weights_only and
its allow-list of model classes instead of unpickling them with full trust (kdtrain/yolo/safe_files.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

LICENSE_NOTE = "ultralytics (AGPL-3.0) is an optional dependency used only by kdtrain yolo"
INSTALL = "pip install ultralytics"
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def missing_ultralytics() -> str | None:
    """One line saying what to install when ultralytics cannot be imported, else None."""
    try:
        found = importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):
        found = "ultralytics" in sys.modules
    if found:
        return None
    return f"kdtrain yolo needs ultralytics, which is not installed: {INSTALL} ({LICENSE_NOTE})"


def default_config_dir() -> str:
    from kdtrain.config import default_cache_dir

    return os.path.join(default_cache_dir(), "ultralytics")


def import_ultralytics(config_dir: str | None = None):
    """Import ultralytics offline and return it. ``config_dir``: its settings folder when it is first
    imported here and YOLO_CONFIG_DIR is unset (default: <kdtrain cache dir>/ultralytics)."""
    missing = missing_ultralytics()
    if missing:
        raise ImportError(missing)
    os.environ["YOLO_OFFLINE"] = "1"  # read at import: no DNS probe, ONLINE = False
    os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")  # read at import: checkpoints load weights_only
    own = "ultralytics" not in sys.modules and not os.environ.get("YOLO_CONFIG_DIR")
    if own:
        os.environ["YOLO_CONFIG_DIR"] = config_dir or default_config_dir()
        os.makedirs(os.environ["YOLO_CONFIG_DIR"], exist_ok=True)
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if own:  # our settings file only: a user's own YOLO settings stay as they are
        SETTINGS.update({"sync": False, **{key: False for key in INTEGRATIONS}})
    _provide_fonts(USER_CONFIG_DIR)
    return ultralytics


def _provide_fonts(folder) -> None:
    """check_font downloads Arial.ttf unless the config folder (or matplotlib's font list) has it: put a
    free font there under that name, so plots and dataset checks never reach for the network."""
    from matplotlib import font_manager

    source = None
    for name in FONTS:
        target = os.path.join(str(folder), name)
        if os.path.exists(target):
            continue
        source = source or font_manager.findfont("DejaVu Sans", fallback_to_default=True)
        os.makedirs(str(folder), exist_ok=True)
        shutil.copyfile(source, target + ".tmp")
        os.replace(target + ".tmp", target)
