"""Teach a model from the user's corrections: after Segment, the user edits the result with the
Segment Editor on any axial slices, and one click fine-tunes the model on them in the background.

Which slices count: those where the segmentation now differs from what the model predicted
(the prediction is kept beside the segmentation by :class:`SegmentationLogic`), plus those the
user marked as checked and right as they were. Each volume's corrections are saved into the
corrections folder the user chose (``volumes/volume-NNN/``: the image, the label map and its
slices file), where they accumulate: a teach round trains on every volume saved there. A round
runs ``asdseg finetune`` in a child process with one in five corrected slices held out
(``--hold-out-every``): the new model is installed as the next version of the site's model
(``la-sassnet-site1``, ``-v2``...) only when it does at least as well as the old one on them.
The shipped model is never replaced; a round that was stopped continues from its checkpoint
when the corrections it trained on are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer

from asdseg.active.sparse_labels import SparseLabels, slices_json_path, write_sparse_labels
from asdseg.active.teach import HOLD_OUT_EVERY
from asdseg.background import FolderJob, JobState
from asdseg.cli import EXIT_WORSE, TEACH_REPORT
from asdseg.errors import AsdsegError, CancelledError, InputError
from asdseg.io.image_io import write_image
from asdseg.io.json_files import write_json
from asdseg.io.labels import Label
from asdseg.registry import find_model
from asdseg.registry.model_card import ModelCard, check_model_name

from .segmentation_logic import (
    CORRECTION_ATTRIBUTES,
    MODEL_ATTRIBUTE,
    PREDICTION_REFERENCE_ROLE,
    SegmentationLogic,
)
from .volume_nodes import array_from_image_data, image_from_volume_node

#: On the segmentation node: the slices the user checked and found right as predicted (JSON
#: list), and the corrections folder entry (``volume-NNN``) its corrections are saved in.
CHECKED_SLICES_ATTRIBUTE, ENTRY_ATTRIBUTE = CORRECTION_ATTRIBUTES
VOLUMES_FOLDER = "volumes"
ROUNDS_FOLDER = "rounds"
#: In a round's folder: what it trained on, so that a stopped round is resumed only on the same.
ROUND_INPUTS_FILE = "teach_inputs.json"
IMAGE_FILE, LABELS_FILE = "image.nrrd", "labels.nii.gz"
BACKGROUND = Label(0, "background", (0, 0, 0))


def default_site_name(model_name: str) -> str:
    """``la-sassnet`` -> ``la-sassnet-site1``; a taught model (``la-sassnet-site1-v3``) keeps
    its site's name, so that teaching it again installs the site's next version."""
    base = re.sub(r"-v\d+$", "", model_name)
    return base if re.search(r"-site\d+$", base) else f"{model_name}-site1"


@dataclass
class TeachOutcome:
    """What a finished round did: the verdict on the held-out slices (``teach_report.json``)
    and the model installed, or None when the new model was worse and was not installed."""

    report: dict
    installed: ModelCard | None
    round_dir: Path

    def message(self) -> str:
        if self.report.get("new_model_broken"):
            return (
                "The taught model predicts NaN or infinite values (its fine-tuning diverged), so it was not "
                f"installed; the round is kept in {self.round_dir}. Teach again with fewer steps."
            )
        old, new = 100 * self.report["old_dice"], 100 * self.report["new_dice"]
        slices = self.report["held_out_slices"]
        comparison = f"Dice {new:.1f} against {old:.1f} before, on {slices} corrected slice(s) held out"
        if self.installed is None:
            return (
                f"The taught model is worse ({comparison}), so it was not installed; the round is kept in "
                f"{self.round_dir}."
            )
        return f"Installed {self.installed.name} ({comparison}); the model you started from is unchanged."


class TeachRun(FolderJob):
    """A teach round running ``asdseg finetune`` into ``round_dir``, which is kept when the
    round stops (so that it can resume) and holds the run whatever its verdict."""

    def __init__(self, round_dir: Path, site_name: str, arguments, folder, **child) -> None:
        self.round_dir = round_dir
        self.site_name = site_name
        self.arguments = list(arguments)
        super().__init__(folder, arguments, **child)


class TeachLogic:
    """Everything the Teach section of the ASDSeg panel does, on an explicit scene, without Qt."""

    def __init__(
        self,
        scene: slicer.vtkMRMLScene,
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        temp_dir: str | Path | None = None,
    ) -> None:
        self.scene = scene
        self.child = {"python_executable": python_executable, "environment": environment}
        self.temp_dir = temp_dir

    # Corrected slices ---------------------------------------------------------------------

    @staticmethod
    def prediction(segmentation_node) -> np.ndarray:
        """The model's label map as Segment put it into the scene, (k, j, i)."""
        node = segmentation_node.GetNodeReference(PREDICTION_REFERENCE_ROLE)
        if node is None or node.GetImageData() is None:
            raise InputError(
                f"{segmentation_node.GetName()!r} was not made by Segment in this version of ASDSeg, so "
                "there is no prediction to compare the corrections with; segment the volume again, then "
                "correct it."
            )
        return array_from_image_data(node.GetImageData())

    @staticmethod
    def _labels_now(segmentation_node) -> tuple[np.ndarray, list[Label]]:
        """The segmentation as a (k, j, i) label map of the model's label values, on its volume."""
        volume_node = SegmentationLogic.source_volume(segmentation_node)
        if volume_node is None or volume_node.GetImageData() is None:
            raise InputError(
                f"{segmentation_node.GetName()!r} is not tied to a volume; segment a volume first."
            )
        segment_labels = SegmentationLogic.segment_labels(segmentation_node)
        labels = [label for _, label in segment_labels]
        return SegmentationLogic.merged_label_map(segmentation_node, segment_labels, volume_node), labels

    def edited_slices(self, segmentation_node) -> set[int]:
        """The axial slices (k) where the segmentation differs from the model's prediction."""
        current, _ = self._labels_now(segmentation_node)
        predicted = self.prediction(segmentation_node)
        if predicted.shape != current.shape:
            raise InputError(
                "the kept prediction does not match the volume's grid; segment the volume again."
            )
        return {int(index) for index in np.flatnonzero((current != predicted).any(axis=(1, 2)))}

    @staticmethod
    def checked_slices(segmentation_node) -> set[int]:
        text = segmentation_node.GetAttribute(CHECKED_SLICES_ATTRIBUTE)
        return set(json.loads(text)) if text else set()

    def mark_checked(self, segmentation_node, indices: Sequence[int], checked: bool = True) -> set[int]:
        """Count slices ``indices`` as checked and right (or no longer); returns the checked set."""
        slice_count = self.prediction(segmentation_node).shape[0]
        bad = [index for index in indices if not 0 <= index < slice_count]
        if bad:
            raise InputError(f"slice(s) {bad} are outside the volume's {slice_count} slices.")
        slices = self.checked_slices(segmentation_node)
        slices = slices | set(indices) if checked else slices - set(indices)
        segmentation_node.SetAttribute(CHECKED_SLICES_ATTRIBUTE, json.dumps(sorted(slices)))
        return slices

    def corrected_slices(self, segmentation_node) -> set[int]:
        """The slices a teach round learns from: edited or checked."""
        return self.edited_slices(segmentation_node) | self.checked_slices(segmentation_node)

    # Corrections folder -------------------------------------------------------------------

    def save_corrections(self, segmentation_node, folder: str | Path) -> Path:
        """Save the volume and its corrected slices into ``folder``'s entry for this
        segmentation (a new ``volumes/volume-NNN`` the first time), replacing what was saved
        there before, all or nothing. Returns the entry's folder."""
        slices = self.corrected_slices(segmentation_node)
        if not slices:
            raise InputError(
                "no slice differs from the prediction and none is marked checked: correct the "
                "segmentation with the Segment Editor (or mark slices that are right) first."
            )
        current, labels = self._labels_now(segmentation_node)
        volume_node = SegmentationLogic.source_volume(segmentation_node)
        entry = self._entry_folder(segmentation_node, Path(folder))
        sparse = SparseLabels(np.ascontiguousarray(current.transpose(2, 1, 0)).astype(np.int64), slices)
        image = image_from_volume_node(volume_node)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=entry.parent))
        try:
            write_image(image, staging / IMAGE_FILE, compress=False)
            write_sparse_labels(sparse, image, [BACKGROUND, *labels], staging / LABELS_FILE)
            record = {
                "volume": volume_node.GetName(),
                "model": segmentation_node.GetAttribute(MODEL_ATTRIBUTE),
            }
            (staging / "entry.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            _replace_folder(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        segmentation_node.SetAttribute(ENTRY_ATTRIBUTE, entry.name)
        return entry

    @staticmethod
    def _entry_folder(segmentation_node, folder: Path) -> Path:
        volumes = folder / VOLUMES_FOLDER
        volumes.mkdir(parents=True, exist_ok=True)
        name = segmentation_node.GetAttribute(ENTRY_ATTRIBUTE)
        if name and re.fullmatch(r"volume-\d{3,}", name):
            return volumes / name
        index = 1
        while (volumes / f"volume-{index:03d}").exists():
            index += 1
        return volumes / f"volume-{index:03d}"

    @staticmethod
    def saved_corrections(folder: str | Path) -> list[tuple[Path, Path]]:
        """(image, labels) of every volume saved in the corrections folder, in order."""
        volumes = Path(folder) / VOLUMES_FOLDER
        entries = sorted(volumes.glob("volume-*")) if volumes.is_dir() else []
        return [
            (entry / IMAGE_FILE, entry / LABELS_FILE)
            for entry in entries
            if (entry / IMAGE_FILE).is_file() and (entry / LABELS_FILE).is_file()
        ]

    # Teach rounds -------------------------------------------------------------------------

    def start_teach(
        self,
        segmentation_node,
        folder: str | Path,
        site_name: str | None = None,
        steps: int = 200,
        device: str = "auto",
    ) -> TeachRun:
        """Save this segmentation's corrections, then fine-tune the model that made it on every
        volume saved in ``folder`` (a stopped round on the same corrections resumes)."""
        if steps < 1:
            raise InputError(f"the number of teaching steps must be positive, got {steps}.")
        model_name = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
        if not model_name:
            raise InputError(
                f"{segmentation_node.GetName()!r} was not made by ASDSeg's Segment; segment first."
            )
        card = find_model(model_name)
        site_name = site_name or default_site_name(card.name)
        check_model_name(site_name, "the site's model name")
        folder = Path(folder)
        self.save_corrections(segmentation_node, folder)
        pairs = self.saved_corrections(folder)
        inputs = {
            "model": str(card.directory),
            "site": site_name,
            "steps": steps,
            "corrections": _fingerprint(pairs),
        }
        round_dir, resume = self._round_folder(folder / ROUNDS_FOLDER, inputs)
        arguments = ["finetune", "--model", str(card.directory)]
        arguments += ["--image", *(str(image) for image, _ in pairs)]
        arguments += ["--labels", *(str(labels) for _, labels in pairs)]
        arguments += ["--steps", str(steps), "--device", device, "--output-dir", str(round_dir)]
        arguments += ["--hold-out-every", str(HOLD_OUT_EVERY), "--install-as", site_name]
        arguments += ["--name", site_name, *(["--resume"] if resume else [])]
        work = tempfile.TemporaryDirectory(prefix="asdseg-teach-", dir=self.temp_dir)
        try:
            return TeachRun(round_dir, site_name, arguments, work, **self.child)
        except BaseException:
            if not resume:
                shutil.rmtree(round_dir, ignore_errors=True)
            raise

    @staticmethod
    def _round_folder(rounds: Path, inputs: dict) -> tuple[Path, bool]:
        """The last round's folder when it stopped before the end on the same inputs (resume),
        else a new ``round-NNN``."""
        existing = sorted(rounds.glob("round-*")) if rounds.is_dir() else []
        if existing:
            last = existing[-1]
            stopped = (last / "checkpoint.pt").is_file() and not (last / "model").is_dir()
            recorded = last / ROUND_INPUTS_FILE
            if stopped and recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) == inputs:
                return last, True
        index = len(existing) + 1
        while (rounds / f"round-{index:03d}").exists():
            index += 1
        round_dir = rounds / f"round-{index:03d}"
        round_dir.mkdir(parents=True)
        write_json(round_dir / ROUND_INPUTS_FILE, inputs)
        return round_dir, False

    def finish_teach(self, run: TeachRun) -> TeachOutcome:
        """The round's verdict and the model it installed. A stopped round raises
        CancelledError (its checkpoint is kept, to resume), a failed one AsdsegError; a worse
        model is an outcome, not an error: nothing is installed, and the message says so."""
        stopped = "teaching stopped; click Teach again to continue from where it stopped."
        try:
            if run.job.cancelled or run.job.wait() is JobState.CANCELLED:
                raise CancelledError(stopped)
            if run.job.return_code not in (0, EXIT_WORSE):
                raise AsdsegError(run.job.error)
            report = json.loads((run.round_dir / TEACH_REPORT).read_text(encoding="utf-8"))
        finally:
            run.close()
        installed = find_model(report["installed"]) if report.get("installed") else None
        return TeachOutcome(report, installed, run.round_dir)


def _fingerprint(pairs: Sequence[tuple[Path, Path]]) -> str:
    """SHA-256 over the corrections' files: a round resumes only on exactly what it started on."""
    digest = hashlib.sha256()
    for paths in pairs:
        for path in paths:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    for _, labels in pairs:
        digest.update(slices_json_path(labels).read_bytes())
    return digest.hexdigest()


def _replace_folder(new: Path, old: Path) -> None:
    """Put ``new`` where ``old`` is, the old content removed only once the new is in place."""
    if not old.exists():
        new.rename(old)
        return
    retired = old.with_name(f".{old.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)
