"""Cancelling a child started through a launcher, as the Slicer modules start the engine.

In Slicer the child is PythonSlicer, a CTK launcher that runs the real Python as its own child
and forwards no signal. The launcher here does the same (and ignores SIGTERM outright); the
engine it starts is the real ``asdseg segment`` on a volume large enough to run for minutes.
"""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from asdseg.background import FolderJob, JobState, engine_environment, progress_of
from asdseg.errors import CancelledError
from asdseg.progress import emit_progress
from asdseg.registry.model_card import ModelCard

from conftest import wait_until

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)"
)

LAUNCHER = """#!{python}
import signal, subprocess, sys
from pathlib import Path

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the engine below inherits this too
worker = subprocess.Popen([sys.executable, *sys.argv[1:]])
Path({pid_file!r}).write_text(str(worker.pid))
sys.exit(worker.wait())
"""


def process_running(pid: int) -> bool:
    """False once the process has exited (a zombie not yet reaped by its parent has exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def launcher(tmp_path: Path) -> tuple[Path, Path]:
    """An executable launcher script and the file it writes the engine's process id to."""
    path, pid_file = tmp_path / "PythonSlicer", tmp_path / "worker.pid"
    path.write_text(LAUNCHER.format(python=sys.executable, pid_file=str(pid_file)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path, pid_file


def long_segmentation(folder: Path, model: ModelCard) -> list[str]:
    volume = np.random.default_rng(0).normal(size=(96, 96, 96)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(folder / "input.nrrd"))
    arguments = ["segment", "--model", str(model.directory), "--device", "cpu", "--overlap", "0.9"]
    return [*arguments, "--input", str(folder / "input.nrrd"), "--output", str(folder / "label.nrrd")]


def test_cancel_ends_the_launcher_and_the_engine_it_started(
    launcher: tuple[Path, Path], tiny_model: ModelCard, tmp_path: Path
) -> None:
    folder = tempfile.TemporaryDirectory(dir=tmp_path)
    arguments = long_segmentation(Path(folder.name), tiny_model)
    run = FolderJob(folder, arguments, str(launcher[0]), engine_environment())
    assert wait_until(lambda: run.progress.done >= 1 or run.state() is not JobState.RUNNING, 120)
    assert run.state() is JobState.RUNNING and run.progress.done < run.progress.total, run.job.error
    engine = int(launcher[1].read_text())
    assert process_running(engine)

    run.cancel()
    assert run.state() is JobState.CANCELLED
    with pytest.raises(CancelledError):  # at once: nothing waits for the engine to finish
        run.wait_for_success("cancelled")
    run.close()
    assert wait_until(lambda: not process_running(engine), 1.0), "the engine outlived the cancel"
    assert run.job.wait(1.0) is JobState.CANCELLED, "the launcher outlived the cancel"
    assert wait_until(lambda: not Path(folder.name).exists(), 5.0)


PARENT = """
import sys, time
from asdseg.background import BackgroundJob, engine_environment

job = BackgroundJob(sys.argv[2:], sys.argv[1], engine_environment())
while job.progress.done < 1 and job.return_code is None:
    time.sleep(0.01)
print(job.progress.done, flush=True)
"""  # exits with the engine running, as Slicer does when closed during a run


def test_no_engine_outlives_the_application_that_started_it(
    launcher: tuple[Path, Path], tiny_model: ModelCard, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", PARENT, str(launcher[0]), *long_segmentation(tmp_path, tiny_model)]
    parent = subprocess.run(command, capture_output=True, text=True, env=engine_environment(), timeout=120)
    assert parent.returncode == 0 and int(parent.stdout) >= 1, parent.stderr
    engine = int(launcher[1].read_text())
    assert wait_until(lambda: not process_running(engine), 1.0), "the engine outlived its application"


def test_the_modules_status_line_names_each_stage_and_what_it_counts() -> None:
    """What the engine reports (emit_progress's JSON lines) becomes the Slicer modules' status
    line: parts while pseudo-labelling (AdaBN, then each volume), steps while fine-tuning,
    windows while segmenting."""
    stream = io.StringIO()
    emit_progress(0, 0, "starting", stream)
    emit_progress(2, 4, "pseudo-labelling", stream)
    emit_progress(5, 200, "fine-tuning", stream, loss=0.5, eta_s=12.0)
    emit_progress(7, 8, "segmenting", stream)
    lines = [progress_of(json.loads(line)).status_line() for line in stream.getvalue().splitlines()]
    assert lines == [
        None,
        "Pseudo-labelling: part 2 of 4",
        "Fine-tuning: step 5 of 200",
        "Segmenting: window 7 of 8",
    ]
