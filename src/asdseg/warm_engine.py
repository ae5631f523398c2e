"""The application's side of the warm engine (:mod:`asdseg.engine_server`): one engine process
per session, started when the first job needs it, that runs jobs one at a time and keeps the
recently used models loaded.

An :class:`EngineJob` behaves as a :class:`asdseg.background.BackgroundJob` (progress, state,
cancel, output, warnings, error), so the Slicer modules poll either the same way. What differs:

- Cancel kills the engine's whole process group, as for a one-process job, and the next job
  starts a fresh engine (a command cannot be stopped safely from inside).
- An engine that dies during a job (a crash, the system's out-of-memory killer) is restarted once
  and the job run again in the fresh engine, which holds no other model; the job's warnings say
  so. If it dies again the job fails with what the engine last wrote.
- The engine ends with the application: :meth:`WarmEngine.shutdown` (a scene close, the module's
  cleanup), at the latest when this Python exits, and even on a crash of the application,
  because the engine exits when its standard input closes.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
import weakref
from collections import deque
from collections.abc import Sequence

from asdseg.background import (
    JobProgress,
    JobState,
    engine_environment,
    error_in,
    kill_process_group,
    own_process_group,
    progress_of,
    warnings_in,
)
from asdseg.engine_server import DEFAULT_KEPT_MODELS
from asdseg.errors import AsdsegError

#: Engines that may still run; killed when this Python exits.
_LIVE_ENGINES: weakref.WeakSet = weakref.WeakSet()
#: The engine's last stderr lines kept for the message of a crash.
STDERR_TAIL = 15


class EngineJob:
    """One command run by a :class:`WarmEngine`; all methods but :meth:`wait` return at once."""

    def __init__(self, engine: WarmEngine, arguments: Sequence[str]) -> None:
        self.arguments = list(arguments)
        self._engine = engine
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._progress = JobProgress()
        self._output: list[str] = []
        self._stderr: list[str] = []
        self._notes: list[str] = []
        self._exit_code: int | None = None
        self._crash: str | None = None
        self._cancelled = False

    # Called by the engine's reader thread.
    def _receive(self, line: str) -> None:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            with self._lock:
                self._output.append(line)
            return
        progress = progress_of(message)
        if progress is not None:
            with self._lock:
                self._progress = progress
        elif message.get("event") == "finished":
            with self._lock:
                self._exit_code = int(message["exit_code"])
                self._stderr = [str(text) for text in message.get("stderr", [])]
            self._finished.set()

    def _engine_died(self, message: str) -> None:
        with self._lock:
            self._crash = message
        self._finished.set()

    def _restarted(self, message: str) -> None:
        with self._lock:
            self._notes.append(message)
            self._progress = JobProgress()

    @property
    def progress(self) -> JobProgress:
        with self._lock:
            return self._progress

    def state(self) -> JobState:
        with self._lock:
            if self._cancelled:
                return JobState.CANCELLED
            if self._crash is not None:
                return JobState.FAILED
            if self._exit_code is None:
                return JobState.RUNNING
            return JobState.SUCCEEDED if self._exit_code == 0 else JobState.FAILED

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job has finished (or ``timeout`` seconds pass)."""
        self._finished.wait(timeout)
        return self.state()

    def cancel(self) -> None:
        """Kill the engine (and so this job) at once; the next job starts a fresh engine."""
        if self._finished.is_set():
            return
        with self._lock:
            self._cancelled = True
        self._engine._stop()
        self._finished.set()

    @property
    def return_code(self) -> int | None:
        """The command's exit status; None while it runs (or when the engine died under it)."""
        with self._lock:
            return self._exit_code

    @property
    def output(self) -> list[str]:
        with self._lock:
            return list(self._output)

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            lines = list(self._stderr)
            notes = list(self._notes)
        return notes + warnings_in(lines)

    @property
    def error(self) -> str:
        """The command's error message, or what is known of the engine's death."""
        with self._lock:
            crash, lines = self._crash, list(self._stderr)
        if crash is not None:
            return crash
        return error_in(lines, self._exit_code, "the engine's command")


class WarmEngine:
    """One engine process for this session (``python -m asdseg.engine_server``), started by the
    first :meth:`submit`; one job at a time."""

    def __init__(
        self,
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        kept_models: int = DEFAULT_KEPT_MODELS,
    ) -> None:
        self._command = [
            python_executable or sys.executable,
            "-m",
            "asdseg.engine_server",
            "--keep-models",
            str(kept_models),
        ]
        self._environment = environment
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._job: EngineJob | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.starts = 0
        _LIVE_ENGINES.add(self)

    @property
    def running(self) -> bool:
        """Whether an engine process is up (idle or working)."""
        with self._lock:
            return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """Whether a job is running in the engine (a :meth:`submit` now would be refused)."""
        with self._lock:
            return self._job is not None and not self._job._finished.is_set()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._process is None else self._process.pid

    def submit(self, arguments: Sequence[str], progress: bool = True) -> EngineJob:
        """Start ``asdseg <arguments>`` in the engine (starting the engine first if none runs),
        with ``--progress json`` unless ``progress`` is False (commands that only print)."""
        with self._lock:
            if self._job is not None and not self._job._finished.is_set():
                raise AsdsegError("the engine is still running a job; wait for it or cancel it first.")
            job = EngineJob(self, [*arguments, "--progress", "json"] if progress else arguments)
            self._job = job
        self._send(job)
        return job

    def shutdown(self) -> None:
        """End the engine now (a running job is cancelled); the next :meth:`submit` starts one."""
        with self._lock:
            job = self._job
        if job is not None and not job._finished.is_set():
            job.cancel()
        self._stop()

    def _send(self, job: EngineJob) -> None:
        process = self._running_process()
        try:
            process.stdin.write(json.dumps({"arguments": job.arguments}) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._on_exit(process)

    def _running_process(self) -> subprocess.Popen:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self._process
            self._stderr_tail = deque(maxlen=STDERR_TAIL)
            self._process = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=self._environment if self._environment is not None else engine_environment(),
                **own_process_group(),
            )
            self.starts += 1
            process = self._process
        threading.Thread(target=self._read_stdout, args=(process,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(process,), daemon=True).start()
        return process

    def _read_stdout(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            with self._lock:
                job = self._job if process is self._process else None
            if job is not None:
                job._receive(line)
        process.wait()
        self._on_exit(process)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            with self._lock:
                if process is self._process:
                    self._stderr_tail.append(line.rstrip("\n"))

    def _on_exit(self, process: subprocess.Popen) -> None:
        """The engine process ended: nothing to do after a cancel or a shutdown; during a job,
        restart it once and run the job again, or fail the job after a second death."""
        with self._lock:
            if process is not self._process:
                return  # stopped on purpose, or already handled
            self._process = None
            job, tail = self._job, "\n".join(self._stderr_tail).strip()
        if job is None or job._finished.is_set():
            return
        died = f"the engine stopped unexpectedly (exit code {process.poll()})"
        if not job._notes:
            job._restarted(f"{died}; restarted it and ran the job again.")
            self._send(job)
            return
        job._engine_died(f"{died} twice; the job did not finish." + (f"\n{tail}" if tail else ""))

    def _stop(self) -> None:
        """Kill the engine's process group (a cancel or a shutdown)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            kill_process_group(process)
            threading.Thread(target=process.wait, daemon=True).start()


@atexit.register
def _kill_live_engines() -> None:
    """No engine outlives the application that started it."""
    for engine in list(_LIVE_ENGINES):
        engine.shutdown()
