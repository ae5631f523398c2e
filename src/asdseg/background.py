"""Running an ``asdseg`` command in a child process, with progress read back and cancel.

The Slicer modules run inference (and later fine-tuning) this way: the UI thread only polls, a
cancel takes effect at once because the child is terminated rather than asked, and a crash or
an out-of-memory kill inside torch cannot take the application down. The child is started with
``--progress json`` so that it prints one JSON object per progress step on stdout
(:func:`asdseg.progress.json_progress`); errors arrive as the CLI's ``error: ...`` line on stderr.
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asdseg
from asdseg.errors import AsdsegError, CancelledError

#: The fields every progress event has; any others are the event's details.
PROGRESS_FIELDS = ("event", "done", "total", "stage")
#: How long a terminated child gets to exit before it is killed.
TERMINATE_GRACE_S = 0.5


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


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the folder holding this ``asdseg``
    package first on ``PYTHONPATH``, so the child runs the same engine as the parent even when
    the parent found it through ``sys.path`` (as Slicer does for an extension's scripts)."""
    environment = dict(os.environ if base is None else base)
    engine_root = str(Path(asdseg.__file__).resolve().parents[1])
    paths = [engine_root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


class BackgroundJob:
    """One ``python -m asdseg <arguments> --progress json`` child process.

    All methods are safe to call from the thread that created the job; two reader threads drain
    the child's pipes so that it never blocks on a full pipe.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        command = [python_executable or sys.executable, "-m", "asdseg", *arguments, "--progress", "json"]
        self._lock = threading.Lock()
        self._progress = JobProgress()
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
        )
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
            except json.JSONDecodeError:
                continue  # plain messages such as "wrote <path>"
            if isinstance(message, dict) and message.get("event") == "progress":
                details = {key: value for key, value in message.items() if key not in PROGRESS_FIELDS}
                with self._lock:
                    self._progress = JobProgress(message["done"], message["total"], message["stage"], details)

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
        """Stop the child now: terminate, and kill if it has not exited within
        :data:`TERMINATE_GRACE_S`."""
        if self._process.poll() is not None:
            return
        self._cancelled = True
        self._process.terminate()
        try:
            self._process.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    @property
    def return_code(self) -> int | None:
        """The child's exit status, or None while it runs."""
        return self._process.poll()

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return [
                line.removeprefix("warning: ") for line in self._stderr_lines if line.startswith("warning: ")
            ]

    @property
    def error(self) -> str:
        """The CLI's error message, or the end of stderr when the child died another way."""
        with self._lock:
            lines = list(self._stderr_lines)
        messages = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        if messages:
            return messages[-1]
        tail = "\n".join(lines[-15:]).strip()
        return f"the engine stopped with exit code {self._process.returncode}" + (
            f":\n{tail}" if tail else "."
        )


class FolderJob:
    """A :class:`BackgroundJob` working on files in its own temporary ``folder``, which
    :meth:`close` deletes after stopping the child. The Slicer modules write their inputs there
    first, so that a failed start leaves nothing behind."""

    def __init__(
        self,
        folder: tempfile.TemporaryDirectory,
        arguments: Sequence[str],
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        try:
            self.job = BackgroundJob(arguments, python_executable, environment)
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
        self.job.cancel()
        self.folder.cleanup()

    def wait_for_success(self, cancelled_message: str) -> None:
        """Wait for the child; raise :class:`CancelledError` with ``cancelled_message`` when it
        was cancelled, or :class:`AsdsegError` with its error when it failed."""
        state = self.job.wait()
        if state is JobState.CANCELLED:
            raise CancelledError(cancelled_message)
        if state is not JobState.SUCCEEDED:
            raise AsdsegError(self.job.error)
