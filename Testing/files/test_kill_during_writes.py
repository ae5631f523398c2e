"""kill -9 during each kind of write leaves the old state or the new, never a mix.

Each test runs a command in a child process whose ``os.replace`` / ``os.rename`` sends it
SIGKILL at the n-th call (nothing can clean up after SIGKILL), for every n the write makes, and
then reads the outputs as the next command would (which completes a write its journal
recorded). Model install has its own test, at the end of this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from asdseg.io.atomic_write import atomic_paths, recover_folder
from asdseg.io.image_io import read_image
from asdseg.networks import build_network
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import install_model, load_network, save_model, user_models_dir
from asdseg.registry.model_card import ModelCard

from conftest import tiny_card

#: Runs the CLI with the n-th rename (os.replace or os.rename) killing the process.
KILLED_AT_RENAME = """
import os, signal, sys
import asdseg.cli as cli

calls = [0]

def dying(real):
    def rename(source, target, *args, **kwargs):
        calls[0] += 1
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(source, target, *args, **kwargs)
    return rename

os.replace, os.rename = dying(os.replace), dying(os.rename)
code = cli.main({argv!r})
print("renames", calls[0])
sys.exit(code)
"""


def run_killed_at(kill_at: int, argv: list[str]) -> subprocess.CompletedProcess:
    script = KILLED_AT_RENAME.format(kill_at=kill_at, argv=argv)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode in (0, -9), completed.stderr
    return completed


def renames_of(completed: subprocess.CompletedProcess) -> int:
    return int(completed.stdout.split("renames")[-1])


def contents(paths: list[Path]) -> list[str | None]:
    """Each path's content hash, None where there is no file."""
    return [hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None for path in paths]


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def kill_at_every_rename(argv: list[str], outputs: list[Path], before) -> None:
    """Run ``argv`` to completion (how many renames it makes, and the new state), then killed at
    each of them, starting each time from ``before()``: after the next read of the first output
    every output is all old or all new, and no hidden file is left."""
    before()
    old = contents(outputs)
    finished = run_killed_at(0, argv)
    new = contents(outputs)
    assert finished.returncode == 0 and new != old
    for kill_at in range(1, renames_of(finished) + 1):
        before()
        run_killed_at(kill_at, argv)
        for folder in {path.parent for path in outputs}:
            recover_folder(folder)  # what the next read or write there does first
        assert contents(outputs) in (old, new), f"a mix after a kill at rename {kill_at}"
        for folder in {path.parent for path in outputs}:
            assert hidden_files(folder) == [], f"left behind after a kill at rename {kill_at}"


@pytest.fixture
def scan(tmp_path: Path, model_home: Path) -> Path:
    torch.manual_seed(0)
    card = tiny_card()
    network = build_network(card["architecture"]["name"], card["architecture"]["params"])
    install_model(save_model(network, card, tmp_path / "models" / "tiny").directory / "card.json")
    image, _ = phantom_image(make_phantom((24, 22, 20), seed=3))
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    return tmp_path / "img.nii.gz"


@pytest.mark.slow
def test_kill_9_during_segment_outputs_leaves_them_all_old_or_all_new(scan: Path) -> None:
    """A label map with its sidecars and an SDM in another folder, over an earlier run's
    outputs (from an older model) that must not be mixed with the new ones."""
    out, maps = scan.parent / "out", scan.parent / "maps"
    argv = ["segment", "-i", str(scan), "-o", str(out / "seg.nii.gz"), "--sdm", str(maps / "sdm.nii.gz")]
    argv += ["--model", "tiny", "--no-mirroring"]

    def earlier_outputs() -> None:
        for folder in (out, maps):
            folder.mkdir(exist_ok=True)
            for path in folder.iterdir():
                path.unlink()
        (out / "seg.nii.gz").write_bytes(b"earlier label map")
        (out / "seg.labels.json").write_text("earlier labels")
        (maps / "sdm.nii.gz").write_bytes(b"earlier sdm")

    earlier_outputs()
    run_killed_at(0, argv)
    outputs = [*sorted(out.iterdir()), maps / "sdm.nii.gz"]
    assert len(outputs) >= 3
    kill_at_every_rename(argv, outputs, earlier_outputs)


def test_kill_9_during_dataset_import_leaves_the_dataset_as_it_was_or_with_the_case(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pydicom", reason="DICOM RT import needs pydicom (pip install -e .[test])")
    from test_dicom_rt import BOXES, write_rtstruct, write_series

    uids, study, frame, _ = write_series(tmp_path / "series")
    write_rtstruct(tmp_path / "rtstruct.dcm", uids, study, frame, BOXES)
    dataset = tmp_path / "Dataset001_Pelvis"
    dataset.mkdir()
    labels = {"background": 0, "bladder": 1, "prostate": 2}
    description = json.dumps(
        {"channel_names": {"0": "T2"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    )
    outputs = [dataset / "imagesTr" / "pelvis_001_0000.nii.gz", dataset / "labelsTr" / "pelvis_001.nii.gz"]
    outputs.append(dataset / "dataset.json")
    argv = ["import-dicom-rt", "--series", str(tmp_path / "series"), "--dataset", str(dataset)]
    argv += ["--rtstruct", str(tmp_path / "rtstruct.dcm"), "--case", "pelvis_001"]
    argv += ["--structure", "prostate=CTV Prostate"]

    def empty_dataset() -> None:
        for path in outputs[:2]:
            path.unlink(missing_ok=True)
        (dataset / "dataset.json").write_text(description)

    kill_at_every_rename(argv, outputs, empty_dataset)
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] in (0, 1)


def test_a_killed_multi_file_write_is_completed_by_the_next_read(tmp_path: Path) -> None:
    """Killed between its renames, a write has replaced one file of two; reading either file
    first completes the write (the journal was whole before the first rename)."""
    first, second = tmp_path / "seg.nii.gz", tmp_path / "seg.labels.json"
    image = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    sitk.WriteImage(image, str(first))
    second.write_text("old")
    script = f"""
import os, signal
import SimpleITK as sitk
from asdseg.io.atomic_write import atomic_paths
real, calls = os.replace, [0]
def replace(source, target):
    calls[0] += 1
    if calls[0] == 3:  # after the journal's rename and the label map's
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, target)
os.replace = replace
with atomic_paths([{str(first)!r}, {str(second)!r}]) as (image_path, text_path):
    image = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    image[1, 1, 1] = 7
    sitk.WriteImage(image, str(image_path))
    text_path.write_text("new")
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == -9, completed.stderr
    assert second.read_text() == "old"  # the mix the kill left, until the next read
    assert read_image(first)[1, 1, 1] == 7
    assert second.read_text() == "new"
    assert hidden_files(tmp_path) == []


def test_a_running_writers_files_are_left_alone(tmp_path: Path) -> None:
    """Recovery only touches what a process that is gone left: a write under way in this
    process (its temporaries, not yet renamed) is not completed or removed by a reader."""
    target = tmp_path / "seg.nii.gz"
    with atomic_paths([target, tmp_path / "seg.labels.json"]) as temporaries:
        for temporary in temporaries:
            temporary.write_text("new")
        recover_folder(tmp_path)
        assert all(temporary.exists() for temporary in temporaries)
        assert not target.exists()
    assert target.read_text() == "new"
    assert hidden_files(tmp_path) == []


def test_a_gone_writers_leftovers_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(gone.stdout)
    leftover = tmp_path / f".seg.nii.gz.{pid}-0123abcd.tmp.nii.gz"
    leftover.write_text("half")
    mine = tmp_path / f".seg.nii.gz.{os.getpid()}-0123abcd.tmp.nii.gz"
    mine.write_text("under way")
    recover_folder(tmp_path)
    assert hidden_files(tmp_path) == [mine.name]


KILL_AT_RENAME = """
import os, signal, sys
import asdseg.cli as cli

real_replace, calls = os.replace, [0]

def replace_or_die(source, target):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target)

os.replace = replace_or_die
sys.exit(cli.main({argv!r}))
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_kill_9_while_replacing_a_model_leaves_the_old_or_the_new_one(
    kill_at: int, workspace: Path, model_home: Path
) -> None:
    """``models install`` over an installed model, killed (SIGKILL, nothing can clean up) at
    its first, second or third rename: the folder holds a whole model, its card naming weights
    of the checksum it records, the old model's or the new one's."""
    installed = user_models_dir() / "tiny"
    old = ModelCard.load(installed / "card.json").weights_sha256
    torch.manual_seed(1)
    candidate = save_model(
        build_network("vnet", tiny_card()["architecture"]["params"]), tiny_card(), workspace / "new"
    )
    script = KILL_AT_RENAME.format(
        kill_at=kill_at, argv=["models", "install", str(candidate.directory / "card.json")]
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ASDSEG_HOME": str(model_home)},
    )
    assert completed.returncode in (0, -9), completed.stderr
    card = ModelCard.load(installed / "card.json")
    load_network(card)  # the weights it names are whole and match its checksum
    new = hashlib.sha256(card.weights_path.read_bytes()).hexdigest()
    assert card.weights_sha256 in (old, new)
    if completed.returncode == 0:
        assert card.weights_sha256 != old
