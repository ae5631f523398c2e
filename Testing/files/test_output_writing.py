"""Writing: all outputs of a run or none, with the user's umask; a failed rename, an interrupt,
SIGTERM, a full disk, a file-size limit or a read-only folder leave no half-written file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import SimpleITK as sitk
from workspace_helpers import SEGMENT, card_copy, finetune, snapshot

from asdseg.cli import main
from asdseg.io.atomic_write import atomic_paths
from asdseg.registry import install_model, user_models_dir


def test_a_failed_rename_puts_back_every_output_already_replaced(tmp_path: Path) -> None:
    targets = [tmp_path / "seg.nii.gz", tmp_path / "seg.labels.json", tmp_path / "sdm.nii.gz"]
    targets[0].write_text("old label map")
    with pytest.raises(IsADirectoryError), atomic_paths(targets) as temporaries:
        for temporary in temporaries:
            temporary.write_text("new")
        targets[2].mkdir()  # appears while the run writes: the third rename must fail
    assert targets[0].read_text() == "old label map"
    assert not targets[1].exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sdm.nii.gz", "seg.nii.gz"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "prob.nii.gz"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_paths([target]) as (temporary,):
        temporary.write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt
    assert [path.name for path in tmp_path.iterdir()] == ["prob.nii.gz"]
    assert target.read_text() == "old"


def test_sigterm_while_writing_removes_the_temporary_files(tmp_path: Path) -> None:
    """The CLI turns SIGTERM into an exception, so the half-written file goes with it."""
    script = f"""
import os, signal, sys, time
from pathlib import Path
import asdseg.cli.models as models_command
from asdseg.cli import main
from asdseg.io.atomic_write import atomic_path

def stopped_while_writing(args):
    with atomic_path(Path({str(tmp_path)!r}) / "seg.nii.gz") as temporary:
        temporary.write_bytes(b"x" * 100000)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    return 0

models_command.command_models = stopped_while_writing
sys.exit(main(["models", "list"]))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 143, completed.stderr
    assert "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_take_the_users_umask(workspace: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        out = workspace / "out"
        code = main(
            [
                *SEGMENT,
                "-i",
                str(workspace / "img.nii.gz"),
                "-o",
                str(out / "seg.nii.gz"),
                "--sdm",
                str(out / "sdm.nii.gz"),
            ]
        )
        assert code == 0
        modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
        assert set(modes.values()) == {0o666 & ~umask}, modes
        card = install_model(user_models_dir() / "tiny" / "card.json")
        assert card.weights_path.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(previous)


def test_a_full_disk_is_an_error_naming_the_file_and_changes_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = workspace / "out"
    out.mkdir()
    (out / "seg.nii.gz").write_text("previous run")
    real_write = sitk.WriteImage

    def write_until_full(image, path, *args, **kwargs):
        if "prob" in Path(path).name:
            Path(path).write_bytes(b"\0" * 4096)
            raise RuntimeError("ImageIO: could not write: No space left on device")
        real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write_until_full)
    before = snapshot(workspace)
    code = main(
        [
            *SEGMENT,
            "-i",
            str(workspace / "img.nii.gz"),
            "-o",
            str(out / "seg.nii.gz"),
            "--probabilities",
            str(out / "prob.nii.gz"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert str(out / "prob.nii.gz") in error and "No space left on device" in error
    assert snapshot(workspace) == before


def limited_file_size(limit: int) -> None:
    """In the child: files may grow to ``limit`` bytes; a longer write fails with EFBIG (the
    signal that would kill the process is ignored), as on a full disk."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


#: Commands whose outputs outgrow a 1 KB file-size limit: an uncompressed label map (ITK), a fine-tuning
#: round's files (its config, torch.save's checkpoint), a model install (the weights).
FULL_DISK_COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "segment": lambda w: [*SEGMENT, "-i", str(w / "img.nii.gz"), "-o", str(w / "seg.nii")],
    "finetune": lambda w: finetune(w, "--steps", "2"),
    "models install": lambda w: ["models", "install", card_copy(w, name="copy")],
}


@pytest.mark.parametrize("command", sorted(FULL_DISK_COMMANDS))
def test_a_file_size_limit_is_an_error_naming_the_file_and_leaves_nothing_half_written(
    command: str, workspace: Path, model_home: Path
) -> None:
    argv = FULL_DISK_COMMANDS[command](workspace)
    before = snapshot(workspace, model_home)
    completed = subprocess.run(
        [sys.executable, "-m", "asdseg", *argv],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: limited_file_size(1024),
        env={**os.environ, "ASDSEG_HOME": str(model_home), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    reasons = ("File too large", "could not be written", "cut short while being written")
    assert any(reason in completed.stderr for reason in reasons), completed.stderr
    assert str(workspace) in completed.stderr or str(model_home) in completed.stderr, completed.stderr
    after = snapshot(workspace, model_home)
    half_written = {
        path for path, digest in after.items() if before.get(path) != digest and digest != "folder"
    }
    assert not half_written, completed.stderr


def test_a_read_only_folder_is_refused_before_any_work(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    read_only = workspace / "mnt"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    code = main([*SEGMENT, "-i", str(workspace / "img.nii.gz"), "-o", str(read_only / "sub" / "o.nii.gz")])
    error = capsys.readouterr().err
    assert code == 2 and "read-only file system or no permission" in error and str(read_only) in error
    assert list(read_only.iterdir()) == []
