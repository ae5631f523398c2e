"""Checks on where a run will write, made before any work so that a bad path costs nothing.

An output must not be one of the run's inputs, nor the same file as another output (a label
map and its SDM at one path would leave whichever was renamed last), nor a folder or a device,
and its folder must be one the user can write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from asdseg.errors import InputError


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode when it exists (hard links,
    symlinks), else the absolute path with every existing link resolved."""
    try:
        status = path.stat()
    except OSError:
        return ("path", path.resolve())
    return ("inode", status.st_dev, status.st_ino)


def check_writable_folder(folder: str | Path, option: str) -> None:
    """Refuse a folder that cannot be created or written: the nearest part of it that exists
    must be a writable folder (not a file, not on a read-only file system)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: {existing} is a file, not a folder; choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{option} {folder}: cannot write in {existing} (read-only file system or no permission); "
            "choose a folder you can write."
        )


def check_output_dir(path: str | Path, option: str) -> None:
    """An output folder: a folder or a path where one can be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder; choose a folder for the outputs.")
    check_writable_folder(path, option)


def check_output_paths(outputs: Sequence[tuple[str, str | Path]], inputs: Sequence[str | Path] = ()) -> None:
    """Refuse output files that are an input or each other, are folders or devices, or lie in a
    folder that cannot be written. ``outputs`` pairs the option that named each file (for the
    message) with its path; files derived from an option (sidecars) carry that option."""
    given = {_identity(Path(path)): Path(path) for path in inputs}
    taken: dict[tuple, tuple[str, Path]] = {}
    for option, path in outputs:
        path = Path(path)
        identity = _identity(path)
        if identity in given:
            raise InputError(
                f"{option} {path}: is the input {given[identity]}; writing there would overwrite it. "
                "Choose another output path."
            )
        if identity in taken:
            other_option, other = taken[identity]
            raise InputError(
                f"{option} {path}: {other_option} already writes {other}; give each output its own path."
            )
        taken[identity] = (option, path)
        if path.is_dir():
            raise InputError(f"{option} {path}: is a folder; give a file name for the output.")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{option} {path}: is not a regular file; give a file name for the output.")
        check_writable_folder(path.parent, option)
