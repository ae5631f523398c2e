"""Progress reporting and cancellation shared by the CLI (tqdm) and the Slicer modules."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable

from asdseg.errors import CancelledError

#: Called with (units done, units in total, what is being done).
ProgressCallback = Callable[[int, int, str], None]


class CancelToken:
    """Set from any thread; long loops call :meth:`raise_if_cancelled` between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user; nothing was written or changed.")


def tqdm_progress(description: str = "") -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback that drives a terminal progress bar, and a function to close it."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=description, unit="win", leave=False)

    def update(done: int, total: int, stage: str) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.set_description(stage)
        bar.n = done
        bar.refresh()

    return update, bar.close


def emit_progress(done: int, total: int, stage: str, stream=None, **details: float) -> None:
    """Print one progress event as a JSON line, for a parent process to read (see
    :mod:`asdseg.background`); ``details`` (such as a loss or an ETA) travel with it."""
    message = {"event": "progress", "done": done, "total": total, "stage": stage, **details}
    print(json.dumps(message), file=stream or sys.stdout, flush=True)


def json_progress(stream=None) -> ProgressCallback:
    """A progress callback that prints one JSON object per line (:func:`emit_progress`)."""

    def update(done: int, total: int, stage: str) -> None:
        emit_progress(done, total, stage, stream)

    return update
