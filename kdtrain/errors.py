"""User errors: wrong or missing input. The CLI prints them with its usage line (exit code 2), no traceback.

They subclass ValueError (and MissingFileError also FileNotFoundError), so code and tests
that catch the built-in types keep working. Anything else that goes wrong is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os


class UsageError(ValueError):
    """A flag, config value or input file the user has to change."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise MissingFileError(f"{what}: no such file: {path}")
    return path


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise MissingFileError(f"{what}: no such folder: {path}")
    return path
