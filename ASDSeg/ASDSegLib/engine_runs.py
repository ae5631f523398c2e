"""The engine's child processes as both module panels run them: PythonSlicer with Slicer's
start-up environment, the session's one warm engine for short jobs, and one run at a time polled
by a Qt timer, so that Slicer's own thread never waits for the engine.

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


#: The session's warm engine, shared by both modules (see :func:`session_engine`).
_session_engine = None


def session_engine():
    """The one warm engine (:class:`asdseg.warm_engine.WarmEngine`) of this Slicer session,
    shared by both modules: a PythonSlicer child started by its first job, which keeps the
    recently used models loaded; ended by :func:`end_session_engine` and when Slicer exits."""
    global _session_engine
    if _session_engine is None:
        from asdseg.warm_engine import WarmEngine

        _session_engine = WarmEngine(python_slicer(), engine_environment())
    return _session_engine


def end_session_engine() -> None:
    """End the warm engine (a scene close, a module's cleanup); the next job starts a new one."""
    if _session_engine is not None:
        _session_engine.shutdown()


def warm_job(arguments, progress: bool = True):
    """``asdseg <arguments>`` in the session's warm engine, or in a PythonSlicer child of its own
    while the engine is busy (:func:`asdseg.background.start_job`)."""
    from asdseg.background import start_job

    return start_job(arguments, python_slicer(), engine_environment(), session_engine(), progress)


def engine_logic(logic_class, *arguments, **options):
    """``logic_class`` (one of the Qt-free logics) on Slicer's scene, after its own
    ``arguments`` and before its keyword ``options`` (``engine=session_engine()``): its engine
    runs in PythonSlicer children that keep their files in Slicer's temporary folder."""
    child = (python_slicer(), engine_environment(), slicer.app.temporaryPath)
    return logic_class(slicer.mrmlScene, *arguments, *child, **options)


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
