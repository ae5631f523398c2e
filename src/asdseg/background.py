"""Running an ``asdseg`` command in a child process, with progress read back and cancel.

The Slicer modules run inference and fine-tuning this way: the UI thread only polls, a cancel
takes effect at once because the child is killed rather than asked, and a crash or an
out-of-memory kill inside torch cannot take the application down. The child is started with
``--progress json`` so that it prints one JSON object per progress step on stdout
(:func:`asdseg.progress.json_progress`); errors arrive as the CLI's ``error: ...`` line on stderr.

In Slicer the child is PythonSlicer, a CTK launcher that starts the real Python as its own child
and forwards no signal: stopping the launcher alone would leave the engine running and holding
the pipes. So the child gets a process group (Windows: a process tree) of its own, and a cancel
kills all of it. Nothing here waits on the caller's thread once a job is cancelled.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asdseg
from asdseg.errors import AsdsegError, CancelledError

if TYPE_CHECKING:
    from asdseg.warm_engine import EngineJob, WarmEngine

#: The fields every progress event has; any others are the event's details.
PROGRESS_FIELDS = ("event", "done", "total", "stage")
#: What a stage counts, where it is not windows of a segmentation (pseudo-labelling: one part
#: for the BatchNorm re-estimation, then one per volume).
STAGE_UNITS = {"fine-tuning": "step", "pseudo-labelling": "part"}
#: Jobs whose child may still run; killed when this Python exits (Slicer closing).
_LIVE_JOBS: weakref.WeakSet = weakref.WeakSet()


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobProgress:
    done: int = 0
    total: int = 0
    stage: str = "starting"
    #: Whatever else the child reported with this step (fine-tuning: ``loss``, ``eta_s``).
    details: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def status_line(self) -> str | None:
        """What the job is doing, for a status line: "Fine-tuning: step 20 of 200"; None
        before the job has counted anything."""
        if not self.total:
            return None
        unit = STAGE_UNITS.get(self.stage, "window")
        return f"{self.stage.capitalize()}: {unit} {self.done} of {self.total}"


def progress_of(message: object) -> JobProgress | None:
    """The progress a child's JSON stdout ``message`` reports, or None for any other message."""
    if not isinstance(message, dict) or message.get("event") != "progress":
        return None
    details = {key: value for key, value in message.items() if key not in PROGRESS_FIELDS}
    return JobProgress(message["done"], message["total"], message["stage"], details)


def warnings_in(stderr_lines: Sequence[str]) -> list[str]:
    """The CLI's ``warning: ...`` messages among ``stderr_lines``."""
    return [line.removeprefix("warning: ") for line in stderr_lines if line.startswith("warning: ")]


def error_in(stderr_lines: Sequence[str], exit_code: int | None, who: str) -> str:
    """The CLI's last ``error: ...`` message among ``stderr_lines``, else the end of them with
    ``who`` (the engine, the engine's command) and its ``exit_code``."""
    messages = [line.removeprefix("error: ") for line in stderr_lines if line.startswith("error: ")]
    if messages:
        return messages[-1]
    tail = "\n".join(stderr_lines[-15:]).strip()
    return f"{who} stopped with exit code {exit_code}" + (f":\n{tail}" if tail else ".")


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the folder holding this ``asdseg``
    package first on ``PYTHONPATH``, so the child runs the same engine as the parent even when
    the parent found it through ``sys.path`` (as Slicer does for an extension's scripts), and
    Python's UTF-8 mode on: otherwise a child on Windows decodes paths and text files with the
    locale's code page, and a user folder or file name with other characters breaks the run."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONUTF8"] = "1"
    engine_root = str(Path(asdseg.__file__).resolve().parents[1])
    paths = [engine_root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


def own_process_group() -> dict:
    """``subprocess.Popen`` options that give the child, and every process it starts, a group of
    its own that :func:`kill_process_group` can end; on Windows also no console window."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_process_group(process: subprocess.Popen) -> None:
    """Kill ``process`` (started with :func:`own_process_group`) and everything it started;
    returns at once, without waiting for them to exit."""
    if sys.platform == "win32":
        # taskkill /T ends the tree by parent process; the job's cleanup thread reaps it.
        subprocess.Popen(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            creationflags=subprocess.CREATE_NO_WINDOW,
        )
        return
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(process.pid, signal.SIGKILL)


class BackgroundJob:
    """One ``python -m asdseg <arguments> --progress json`` child process (without
    ``--progress json`` when ``progress`` is False, for commands that only print).

    All methods are safe to call from the thread that created the job; two reader threads drain
    the child's pipes so that it never blocks on a full pipe. Only :meth:`wait` blocks.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        progress: bool = True,
    ) -> None:
        command = [python_executable or sys.executable, "-m", "asdseg", *arguments]
        if progress:
            command += ["--progress", "json"]
        self._lock = threading.Lock()
        self._progress = JobProgress()
        self._stdout_lines: list[str] = []
        self._stderr_lines: list[str] = []
        self._cancelled = False
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=environment if environment is not None else engine_environment(),
            **own_process_group(),
        )
        _LIVE_JOBS.add(self)
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:  # plain messages such as "wrote <path>"
                with self._lock:
                    self._stdout_lines.append(line.rstrip("\n"))
                continue
            progress = progress_of(message)
            if progress is not None:
                with self._lock:
                    self._progress = progress

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            with self._lock:
                self._stderr_lines.append(line.rstrip("\n"))

    @property
    def progress(self) -> JobProgress:
        with self._lock:
            return self._progress

    def state(self) -> JobState:
        """Where the job is now; never blocks."""
        return_code = self._process.poll()
        if self._cancelled:
            return JobState.CANCELLED
        if return_code is None:
            return JobState.RUNNING
        return JobState.SUCCEEDED if return_code == 0 else JobState.FAILED

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the child exits (or ``timeout`` seconds pass) and its output is read."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return JobState.RUNNING
        for reader in self._readers:
            reader.join()
        return self.state()

    def cancel(self) -> None:
        """Kill the child and every process it started; returns at once (the state is
        CANCELLED from now on), the processes are gone a moment later."""
        if self._process.poll() is not None:
            return
        self._cancelled = True
        kill_process_group(self._process)

    @property
    def return_code(self) -> int | None:
        """The child's exit status, or None while it runs."""
        return self._process.poll()

    @property
    def output(self) -> list[str]:
        """The lines the child printed on stdout, progress events left out."""
        with self._lock:
            return list(self._stdout_lines)

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return warnings_in(self._stderr_lines)

    @property
    def error(self) -> str:
        """The CLI's error message, or the end of stderr when the child died another way."""
        with self._lock:
            lines = list(self._stderr_lines)
        return error_in(lines, self._process.returncode, "the engine")


def start_job(
    arguments: Sequence[str],
    python_executable: str | None = None,
    environment: dict[str, str] | None = None,
    engine: WarmEngine | None = None,
    progress: bool = True,
) -> BackgroundJob | EngineJob:
    """``asdseg <arguments>`` in ``engine`` when one is given and idle, else in a process of its
    own: a job never waits for, or fails because of, another module's job in the engine."""
    if engine is not None and not engine.busy:
        return engine.submit(arguments, progress)
    return BackgroundJob(arguments, python_executable, environment, progress)


class FolderJob:
    """A :class:`BackgroundJob` working on files in its own temporary ``folder``, which
    :meth:`close` deletes after stopping the child. The Slicer modules write their inputs there
    first, so that a failed start leaves nothing behind. Given an ``engine``, the command runs
    in that warm engine (:mod:`asdseg.warm_engine`) when it is idle (:func:`start_job`)."""

    def __init__(
        self,
        folder: tempfile.TemporaryDirectory,
        arguments: Sequence[str],
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        engine: WarmEngine | None = None,
    ) -> None:
        self.folder = folder
        try:
            self.job = start_job(arguments, python_executable, environment, engine)
        except BaseException:
            folder.cleanup()
            raise

    @property
    def progress(self) -> JobProgress:
        return self.job.progress

    def state(self) -> JobState:
        return self.job.state()

    def cancel(self) -> None:
        self.job.cancel()

    def close(self) -> None:
        """Stop the child if it still runs and delete its files once it has exited, without
        blocking: a killed child is waited for in a thread of its own."""
        self.job.cancel()
        if self.job.return_code is not None:
            self.delete_files()
        else:
            threading.Thread(target=self._delete_files_after_exit, daemon=True).start()

    def delete_files(self) -> None:
        """Delete the temporary folder (called once the child has exited, so that nothing
        writes there any more); a job with outputs of its own deletes those it did not keep."""
        self.folder.cleanup()

    def _delete_files_after_exit(self) -> None:
        self.job.wait()
        self.delete_files()

    def wait_for_success(self, cancelled_message: str) -> None:
        """Wait for the child; raise :class:`CancelledError` with ``cancelled_message`` when it
        was cancelled (at once, without waiting for it), or :class:`AsdsegError` with its error
        when it failed."""
        if self.job.cancelled:
            raise CancelledError(cancelled_message)
        state = self.job.wait()
        if state is JobState.CANCELLED:
            raise CancelledError(cancelled_message)
        if state is not JobState.SUCCEEDED:
            raise AsdsegError(self.job.error)


@atexit.register
def _kill_live_jobs() -> None:
    """A child must not outlive the application that started it (Slicer closing with a run in
    progress, where no module cleanup ran)."""
    for job in list(_LIVE_JOBS):
        job.cancel()
