"""User errors: wrong or missing input. The CLI prints them with its usage line (exit code 2), no traceback;
and RunStopped, a run that stopped on its own with one line (exit code 1).

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


class RunStopped(RuntimeError):
    """A run that cannot go on and says why in one line (e.g. its loss is no longer finite). The CLI prints
    the line, no usage and no traceback (--debug shows it), exit code 1."""


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise MissingFileError(f"{what}: no such file: {path}")
    return path


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise MissingFileError(f"{what}: no such folder: {path}")
    return path


def _check_folder_to_write(folder: str, path: str, what: str) -> None:
    """``folder`` (of ``path``) is a folder that exists or can be made, and can be written into."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{what}: {path} is under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: {path} cannot be written: no permission to write in {existing}")


def require_writable_dir(path: str, what: str) -> str:
    """A folder to write into: it exists, or it can be made, and it can be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{what}: {path} is a file; give a folder")
    _check_folder_to_write(path, path, what)
    return path


def require_writable_file(path: str, what: str) -> str:
    """A file to write: not a folder, and its folder exists or can be made and can be written."""
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path} is a folder; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{what}: {path} cannot be written: no permission")
    _check_folder_to_write(os.path.dirname(os.path.abspath(path)), path, what)
    return path


def one_line(error: BaseException) -> str:
    """An error as one line: its type and the first line of its message (what a failed run or image reports)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
