"""Checkpoints: everything needed to resume a run exactly, written atomically."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from asdseg.errors import AsdsegError
from asdseg.io.atomic_write import atomic_path, write_errors_named


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file, so a crash never leaves half a
    checkpoint where the last good one was."""
    with atomic_path(path) as temporary, write_errors_named(path):
        torch.save(state, temporary)


def load_checkpoint(
    path: str | Path, missing_advice: str = "nothing to resume: start without --resume."
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing one is refused with
    ``missing_advice`` (what the caller's user can do), a truncated or corrupt one with a
    message saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise AsdsegError(f"{path}: no checkpoint there (the run stopped before its first); {missing_advice}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise AsdsegError(
            f"{path}: the checkpoint is incomplete or corrupt ({error}). Delete it to start again, "
            "or restore an earlier copy."
        ) from error
