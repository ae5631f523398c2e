"""The ``asdseg`` command line, including its handling of bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from asdseg.cli import build_parser, main
from asdseg.cli.exits import EXIT_ERROR, run_command
from asdseg.io.image_io import read_image, same_geometry
from asdseg.progress import tqdm_progress
from asdseg.registry import find_model, install_model, load_network, save_model, user_models_dir
from asdseg.registry.model_card import ModelCard


@pytest.fixture
def installed(tiny_model: ModelCard) -> str:
    install_model(tiny_model.directory / "card.json")
    return tiny_model.name


def test_every_command_has_help() -> None:
    for command in (
        ["segment"],
        ["evaluate"],
        ["models"],
        ["models", "list"],
        ["models", "install"],
        ["release"],
        ["demo"],
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "asdseg", *command, "--help"], capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0 and "usage: asdseg" in completed.stdout, command


def test_segment_writes_all_outputs_with_input_geometry(
    installed: str, phantom_files, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image_path, _ = phantom_files
    out = tmp_path / "results"
    code = main(
        [
            "segment",
            "-i",
            str(image_path),
            "-o",
            str(out / "seg.nii.gz"),
            "--model",
            installed,
            "--sdm",
            str(out / "sdm.nii.gz"),
            "--probabilities",
            str(out / "prob.nii.gz"),
            "--largest-component",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert_one_progress_bar(capsys.readouterr().err)
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "prob.nii.gz",
        "sdm-1.nii.gz",
        "sdm-2.nii.gz",
        "seg.ctbl",
        "seg.itksnap.txt",
        "seg.labels.json",
        "seg.nii.gz",
    ]
    source = read_image(image_path)
    assert all(
        same_geometry(sitk.ReadImage(str(out / name)), source) for name in names if name.endswith(".nii.gz")
    )


def assert_one_progress_bar(stderr: str) -> None:
    """Captured (not a terminal), the bar is drawn once per count at most and ends on its own
    line at 100 %."""
    drawings = [drawing for drawing in stderr.split("\r") if drawing.strip()]
    counts = [drawing.split("|")[-1].split()[0] for drawing in drawings]
    assert drawings and len(counts) == len(set(counts)), drawings
    assert drawings[-1].startswith("segmenting: 100%") and stderr.endswith("\n"), drawings


def test_a_slow_last_window_still_draws_100_percent_once() -> None:
    """The case that printed the final state twice: the last update comes more than the
    captured bar's one-second draw interval after the one before."""
    stream = io.StringIO()
    update, close = tqdm_progress(stream=stream)
    update(1, 3, "segmenting")
    time.sleep(1.1)
    update(3, 3, "segmenting")
    close()
    assert_one_progress_bar(stream.getvalue())


BAD_INPUTS = {
    "missing": (lambda d: d / "absent.nii.gz", "file not found"),
    "not an image": (
        lambda d: (d / "x.nii.gz").write_text("hello") and d / "x.nii.gz",
        "not a readable image",
    ),
    "2D": (
        lambda d: (
            sitk.WriteImage(sitk.Image([9, 9], sitk.sitkFloat32), str(d / "2d.nii.gz")) or d / "2d.nii.gz"
        ),
        "2D image",
    ),
    "4D": (
        lambda d: (
            sitk.WriteImage(sitk.Image([9, 9, 9, 2], sitk.sitkFloat32), str(d / "4d.nii.gz"))
            or d / "4d.nii.gz"
        ),
        "4D image",
    ),
    "constant": (
        lambda d: (
            sitk.WriteImage(sitk.Image([9, 9, 9], sitk.sitkFloat32) + 3, str(d / "c.nii.gz"))
            or d / "c.nii.gz"
        ),
        "constant",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_nonzero_with_a_clear_message_and_no_output(
    case: str, installed: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make, message = BAD_INPUTS[case]
    source = tmp_path / "in"
    source.mkdir()
    path = make(source)
    out = tmp_path / "out"
    code = main(["segment", "-i", str(path), "-o", str(out / "seg.nii.gz"), "--model", installed])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and path.name in error
    assert not out.exists() or not any(out.iterdir())


def test_nan_voxels_exit_nonzero(installed: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    array = np.random.rand(12, 12, 12).astype(np.float32)
    array[3, 3, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nii.gz"))
    assert (
        main(
            [
                "segment",
                "-i",
                str(tmp_path / "nan.nii.gz"),
                "-o",
                str(tmp_path / "s.nii.gz"),
                "--model",
                installed,
            ]
        )
        == 2
    )
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_unknown_model_and_wrong_checksum(
    tiny_model: ModelCard, phantom_files, tmp_path: Path, capsys
) -> None:
    args = ["segment", "-i", str(phantom_files[0]), "-o", str(tmp_path / "s.nii.gz")]
    assert main([*args, "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    installed = install_model(tiny_model.directory / "card.json")
    installed.weights_path.write_bytes(b"corrupt")
    assert main([*args, "--model", "tiny"]) == 2
    assert "do not match their model card" in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_existing_output_survives_a_failed_run(installed: str, tmp_path: Path) -> None:
    output = tmp_path / "seg.nii.gz"
    output.write_bytes(b"previous result")
    assert (
        main(["segment", "-i", str(tmp_path / "absent.nii.gz"), "-o", str(output), "--model", installed]) == 2
    )
    assert output.read_bytes() == b"previous result"


def test_evaluate_prints_a_table_and_writes_csv(phantom_files, tmp_path: Path, capsys) -> None:
    _, label_path = phantom_files
    csv_path = tmp_path / "metrics.csv"
    assert (
        main(["evaluate", "--pred", str(label_path), "--ref", str(label_path), "--csv", str(csv_path)]) == 0
    )
    assert "Dice" in capsys.readouterr().out
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["label"] for row in rows] == ["1", "2"]
    assert all(float(row["dice"]) == 1.0 and float(row["hd95_mm"]) == 0.0 for row in rows)


def test_evaluate_pairs_two_folders_by_case_name(phantom_files, tmp_path: Path, capsys) -> None:
    """A folder of predictions (``case.nii.gz``, as segment names them) against an nnU-Net
    labelsTr-like folder; a case on one side only is named."""
    _, label_path = phantom_files
    label = sitk.ReadImage(str(label_path))
    predictions, references = tmp_path / "predictions", tmp_path / "labelsTr"
    for folder in (predictions, references):
        folder.mkdir()
    for index, case in enumerate(["case_b", "case_a"]):
        sitk.WriteImage(label, str(references / f"{case}.nii.gz"))
        sitk.WriteImage(label if index else label * 0, str(predictions / f"{case}.nii.gz"))
    csv_path = tmp_path / "metrics.csv"
    arguments = ["evaluate", "--pred", str(predictions), "--ref", str(references), "--csv", str(csv_path)]
    assert main(arguments) == 0
    dice_of = {
        (Path(row["case"]).name, row["label"]): float(row["dice"]) for row in csv.DictReader(csv_path.open())
    }
    assert dice_of == {
        ("case_a.nii.gz", "1"): 1.0,
        ("case_a.nii.gz", "2"): 1.0,
        ("case_b.nii.gz", "1"): 0.0,
        ("case_b.nii.gz", "2"): 0.0,
    }
    sitk.WriteImage(label, str(references / "case_c.nii.gz"))
    capsys.readouterr()
    assert main(arguments) == 2
    assert "only among the references: case_c" in capsys.readouterr().err


def test_suggest_also_writes_the_label_map_segment_gives(
    attention_model: ModelCard, phantom_files, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--segmentation`` adds the model's label map (what ActiveAnnotate pre-fills slices with)
    and its sidecars, equal to ``asdseg segment`` at the same precision; the rest is unchanged."""
    image_path, _ = phantom_files
    model = str(attention_model.directory)
    arguments = ["suggest", "-i", str(image_path), "--model", model, "-k", "3", "--device", "cpu"]
    assert main([*arguments, "--output", str(tmp_path / "plain.json")]) == 0
    prediction = tmp_path / "out" / "prediction.nii.gz"
    with_map = [*arguments, "--output", str(tmp_path / "with.json"), "--segmentation", str(prediction)]
    assert main(with_map) == 0
    assert f"wrote {prediction}" in capsys.readouterr().out
    record = json.loads((tmp_path / "with.json").read_text())
    assert record == json.loads((tmp_path / "plain.json").read_text())

    segmented = tmp_path / "segmented.nii.gz"
    segment = ["segment", "-i", str(image_path), "-o", str(segmented), "--model", model]
    assert main([*segment, "--device", "cpu", "--precision", "fp32"]) == 0
    written = read_image(prediction)
    assert same_geometry(written, read_image(image_path))
    labels = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(read_image(segmented)))
    assert labels.any()
    sidecar = (tmp_path / "out" / "prediction.labels.json").read_text()
    assert sidecar == (tmp_path / "segmented.labels.json").read_text()


def test_models_list_show_install(tiny_model: ModelCard, capsys) -> None:
    assert main(["models", "install", str(tiny_model.directory / "card.json")]) == 0
    assert "installed tiny" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert main(["models"]) == 0
    assert capsys.readouterr().out == listed
    assert main(["models", "show", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny " in listed and "labels: 1=ellipsoid, 2=sphere" in out


def test_a_shipped_models_name_is_taken_only_as_a_new_version_and_listed_as_such(
    tiny_model: ModelCard, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shipped = find_model("la-dan")
    card = {**tiny_model.data, "name": "la-dan", "version": "9"}
    own = save_model(load_network(tiny_model), card, tmp_path / "la-dan").directory
    assert main(["models", "install", str(own / "card.json")]) == 2
    assert "'la-dan' is the name of a shipped model" in capsys.readouterr().err
    assert find_model("la-dan").directory == shipped.directory and not (user_models_dir() / "la-dan").exists()

    assert main(["models", "install", str(own / "card.json"), "--as-new-version"]) == 0
    assert "installed la-dan (v9)" in capsys.readouterr().out
    assert find_model("la-dan").directory == user_models_dir() / "la-dan"
    assert main(["models"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"v9     user folder, hides shipped v{shipped.data['version']}" in listed["la-dan"]
    assert " shipped " in listed["la-sassnet"]
    assert main(["models", "show", str(own)]) == 0
    assert f"from: path ({own})" in capsys.readouterr().out
    assert main(["models", "show", "la-sassnet"]) == 0
    assert "from: shipped (" in capsys.readouterr().out


def test_release_refuses_a_shipped_name_in_the_model_folder_only(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A release into your model folder would hide the shipped model; elsewhere it hides nothing.
    With --as-new-version the name passes and the release goes on (to the missing run here)."""
    run = str(tmp_path / "no-run")
    assert main(["release", run, "--name", "la-dan"]) == 2
    assert "'la-dan' is the name of a shipped model" in capsys.readouterr().err
    for extra in (["--as-new-version"], ["--output-dir", str(tmp_path / "elsewhere")]):
        assert main(["release", run, "--name", "la-dan", *extra]) == 2
        error = capsys.readouterr().err
        assert "shipped model" not in error and "no-run" in error, error


def test_parser_knows_the_documented_segment_options() -> None:
    args = build_parser().parse_args(
        [
            "segment",
            "-i",
            "a.nii",
            "-o",
            "b.nii",
            "--model",
            "m",
            "--confidence",
            "c.nii",
            "--sdm",
            "d.nii",
            "--device",
            "cpu",
            "--largest-component",
        ]
    )
    assert (args.confidence, args.sdm, args.device, args.largest_component) == ("c.nii", "d.nii", "cpu", True)


def test_no_mirroring_skips_the_mirroring_the_card_asks_for(
    tiny_model: ModelCard, phantom_files, tmp_path: Path
) -> None:
    """The card of a copy of the tiny (untrained, not flip-equivariant) model asks for mirroring
    in x and y: its default probabilities differ from the plain model's, and with --no-mirroring
    they are the plain model's."""
    card = {**tiny_model.data, "name": "tiny-mirrored"}
    card["inference"] = {**card["inference"], "mirror_axes": [0, 1]}
    mirrored = save_model(load_network(tiny_model), card, tmp_path / "tiny-mirrored")
    image_path, _ = phantom_files

    def probabilities(model: ModelCard, *extra: str) -> np.ndarray:
        output = tmp_path / f"{model.name}{'-'.join(extra)}"
        arguments = ["-i", str(image_path), "-o", str(output / "seg.nii.gz"), "--model", str(model.directory)]
        assert main(["segment", *arguments, "--probabilities", str(output / "p.nii.gz"), *extra]) == 0
        return sitk.GetArrayFromImage(sitk.ReadImage(str(output / "p.nii.gz")))

    plain = probabilities(tiny_model)
    assert np.abs(probabilities(mirrored) - plain).max() > 1e-4
    np.testing.assert_allclose(probabilities(mirrored, "--no-mirroring"), plain, atol=1e-6)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        torch.OutOfMemoryError(),
    ],
)
def test_running_out_of_device_memory_is_one_line_with_advice(
    error: RuntimeError, capsys: pytest.CaptureFixture
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    assert run_command(fail, argparse.Namespace()) == EXIT_ERROR
    message = capsys.readouterr().err
    assert message.startswith("error: out of memory (") and "--batch-size" in message
    assert message.count("\n") == 1


def test_other_runtime_errors_are_not_taken_for_memory() -> None:
    def fail(args: argparse.Namespace) -> int:
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes"):
        run_command(fail, argparse.Namespace())
