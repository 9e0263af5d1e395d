"""kdtrain's third-party modules: kdops needs only torch, kdtrain also needs the extra ``kdops[train]``."""

from __future__ import annotations

import importlib.util

EXTRA = "kdops[train]"
# import name -> package name on the index
MODULES = {"torch": "torch", "torchvision": "torchvision", "pycocotools": "pycocotools", "tqdm": "tqdm",
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
    for module, package in MODULES.items():
        if not _installed(module):
            name = package if package == module else f"{package} (import name {module})"
            return f'kdtrain needs {name}, which is not installed: pip install "{EXTRA}"'
    return None
