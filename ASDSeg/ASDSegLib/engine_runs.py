"""The engine's child processes as both module panels run them: PythonSlicer with Slicer's
start-up environment, and one run at a time polled by a Qt timer, so that Slicer's own thread
never waits for the engine.

Widget side (Qt): only the module files import it; the runs themselves (what a run writes,
starts and reads back) are the Qt-free logic's.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import qt
import slicer

#: How often a panel polls a running engine, in milliseconds.
POLL_INTERVAL_MS = 150


def python_slicer() -> str | None:
    """PythonSlicer runs the engine in a child process with Slicer's Python."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = (
        Path(slicer.app.slicerHome)
        / "bin"
        / ("PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer")
    )
    return str(candidate) if candidate.exists() else None


def engine_environment() -> dict[str, str]:
    """Slicer's start-up environment with the engine on PYTHONPATH, for PythonSlicer children."""
    from asdseg.background import engine_environment as with_engine

    return with_engine(slicer.util.startupEnvironment())


def engine_logic(logic_class, *arguments):
    """``logic_class`` (one of the Qt-free logics) on Slicer's scene, after its own
    ``arguments``: its engine runs in PythonSlicer children that keep their files in Slicer's
    temporary folder."""
    return logic_class(
        slicer.mrmlScene, *arguments, python_slicer(), engine_environment(), slicer.app.temporaryPath
    )


class RunPoller:
    """Polls one engine job at a time (anything with ``state()``: a run of the logic, or an
    :class:`asdseg.background.BackgroundJob`) every :data:`POLL_INTERVAL_MS`: ``on_poll(job)``
    while it runs, ``on_end(job)`` once it has ended, polling stopped by then."""

    def __init__(self, on_poll: Callable[[object], None], on_end: Callable[[object], None]) -> None:
        #: The job being polled, or None.
        self.job = None
        self._on_poll = on_poll
        self._on_end = on_end
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.poll)

    def start(self, job) -> None:
        self.job = job
        self._timer.start()

    def stop(self):
        """Stop polling and return the job (None when there was none); it is left as it is."""
        job, self.job = self.job, None
        self._timer.stop()
        return job

    def poll(self) -> None:
        from asdseg.background import JobState

        if self.job is None:
            return
        if self.job.state() is JobState.RUNNING:
            self._on_poll(self.job)
        else:
            self._on_end(self.stop())
