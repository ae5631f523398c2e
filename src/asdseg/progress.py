"""Progress reporting and cancellation shared by the CLI (tqdm) and the Slicer modules."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import TextIO

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


def tqdm_progress(
    description: str = "", stream: TextIO | None = None, unit: str = "win"
) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback that drives one progress bar on ``stream`` (stderr by default), and a
    function to close it. With ``unit="B"`` the counts are bytes, shown as kB, MB...

    The bar appears with the first update (so there is no empty bar before the total is known)
    and is drawn once per update at most. Where the stream is not a terminal (output captured
    by ``make demo > log`` or a CI job), every drawing stays in the log: it is drawn at most
    once a second and its final state is kept on its own line.
    """
    from tqdm import tqdm

    stream = stream or sys.stderr
    terminal = stream.isatty()
    bar: tqdm | None = None

    def update(done: int, total: int, stage: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total,
                desc=stage or description,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                file=stream,
                leave=not terminal,
                mininterval=0.1 if terminal else 1.0,
            )
        if bar.total != total:
            bar.total = total
        if stage and bar.desc != stage:
            bar.set_description_str(stage, refresh=False)
        if done >= total:
            # close() draws the final state (on its own line); drawing it here as well would
            # print 100 % twice whenever the last window took longer than the draw interval.
            bar.n = done
        else:
            bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


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
