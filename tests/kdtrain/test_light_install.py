"""Light install: help without torch, one line naming the extra when a kdtrain dependency is missing,
and ``import kdops`` without any of kdtrain's dependencies."""

import os
import subprocess
import sys

import pytest

from kdtrain_testutil import REPO

TRAIN_ONLY = ("torchvision", "pycocotools", "tqdm", "matplotlib", "yaml")


def _python(code: str):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["predict", "--help"],
                                  ["pseudo-label", "--help"], ["two-step", "--help"], ["demo", "--help"],
                                  ["train"]])
def test_help_and_early_errors_import_no_torch(argv):
    result = _python(f"""
import sys
from kdtrain.cli import main
try:
    main({argv!r})
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "torchvision", "pycocotools", "matplotlib", "tqdm", "numpy") if m in sys.modules]
print(code, heavy)
""")
    assert result.returncode == 0, result.stderr
    code, heavy = result.stdout.strip().splitlines()[-1].split(" ", 1)  # after the help text
    assert code == ("2" if argv == ["train"] else "0")
    assert heavy == "[]", f"{argv} imported {heavy}"


@pytest.mark.parametrize("module,named", [("pycocotools", "pycocotools"), ("PIL", "pillow (import name PIL)")])
def test_a_missing_dependency_is_one_line_naming_the_extra(module, named):
    result = _python(f"""
import sys
sys.modules[{module!r}] = None  # as if not installed
from kdtrain.cli import main
sys.exit(main(["eval", "--checkpoint", "c.pth", "--images", "d", "--ann", "a.json"]))
""")
    assert result.returncode == 2
    assert result.stderr.strip() == f'kdtrain needs {named}, which is not installed: pip install "kdops[train]"'


def test_a_finder_that_refuses_the_module_counts_as_missing():
    result = _python("""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
sys.modules.pop("matplotlib", None)
from kdtrain.cli import missing_dependency
print(missing_dependency())
""")
    assert result.stdout.strip() == 'kdtrain needs matplotlib, which is not installed: pip install "kdops[train]"'


def test_import_kdops_needs_none_of_kdtrains_dependencies():
    # Blocked rather than looked up in sys.modules afterwards: torch itself imports tqdm when it is there.
    result = _python(f"""
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
for name in {TRAIN_ONLY!r}:
    sys.modules.pop(name, None)
warnings.simplefilter("ignore")  # kdops warns when it falls back to its reference implementation
import kdops, kdops.nn
print("imported")
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "imported"
