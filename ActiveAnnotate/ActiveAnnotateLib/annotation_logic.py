"""ActiveAnnotate's logic: suggest slices, keep track of the labelled ones, fine-tune, export.

The annotator's labels are an ordinary segmentation node (edited with the Segment Editor); the
slices that count as labelled are stored on it as a node attribute, so they are saved with the
scene and a session can be resumed. Suggesting and fine-tuning run the engine in a child process
(``asdseg suggest`` / ``asdseg finetune``) on files written to a temporary folder, so the caller
only polls and Cancel is immediate; the model in use changes only when a fine-tuning round has
completed and its new model has been read back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer

from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.active.strategies import DEFAULT_STRATEGY
from asdseg.active.suggestion_report import read_suggestions
from asdseg.background import FolderJob
from asdseg.errors import InputError, ModelError
from asdseg.io.image_io import write_image
from asdseg.io.labels import Label
from asdseg.registry import find_model
from asdseg.registry.model_card import ModelCard

from .slice_views import mark_suggestions
from ASDSegLib.roi_nodes import check_roi_node, roi_region
from ASDSegLib.segmentation_logic import SegmentationLogic, apply_label
from ASDSegLib.volume_nodes import image_from_volume_node

#: Segmentation node attributes: the labelled slices and the last suggestion (JSON).
LABELLED_SLICES_ATTRIBUTE = "ActiveAnnotate.LabelledSlices"
SUGGESTIONS_ATTRIBUTE = "ActiveAnnotate.Suggestions"
BACKGROUND = Label(0, "background", (0, 0, 0))


class SuggestRun(FolderJob):
    def __init__(self, volume_node, segmentation_node, arguments, folder, output, **child) -> None:
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.output = output
        super().__init__(folder, arguments, **child)


class FineTuneRun(FolderJob):
    """A fine-tuning round writing its checkpoints and new model to ``output_dir``, a new
    ``round-NNN`` folder. Unless the new model is taken into use (:attr:`adopted`), closing the
    run deletes that folder once the child has exited: a cancelled or failed round leaves
    nothing behind."""

    def __init__(self, output_dir: Path, arguments, folder, **child) -> None:
        self.output_dir = output_dir
        self.adopted = False
        try:
            super().__init__(folder, arguments, **child)
        except BaseException:
            shutil.rmtree(output_dir, ignore_errors=True)
            raise

    def delete_files(self) -> None:
        super().delete_files()
        if not self.adopted:
            shutil.rmtree(self.output_dir, ignore_errors=True)


class AnnotationLogic:
    """Everything the ActiveAnnotate panel does, on an explicit MRML scene and without Qt.

    ``work_dir`` keeps the models of the fine-tuning rounds (``round-001/model``, ...); ``model``
    is the name or folder of the model in use.
    """

    def __init__(
        self,
        scene: slicer.vtkMRMLScene,
        work_dir: str | Path,
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        temp_dir: str | Path | None = None,
    ) -> None:
        """``temp_dir``: where rounds write their inputs (see :class:`SegmentationLogic`)."""
        self.scene = scene
        self.work_dir = Path(work_dir)
        self.child = {"python_executable": python_executable, "environment": environment}
        self.temp_dir = temp_dir
        self.model: str | None = None

    # Models ---------------------------------------------------------------------------------

    def model_card(self) -> ModelCard:
        if not self.model:
            raise ModelError("no model is selected: pick a model or click 'New model'.")
        return find_model(self.model)

    def new_model(self, segmentation_node, volume_node) -> ModelCard:
        """An untrained attention U-Net for the segmentation's segments, at the volume's
        spacing, saved under the work folder and made the model in use."""
        # The only step that builds a network in Slicer's process, so torch is loaded here and
        # not when the module opens.
        from asdseg.active.starter_model import untrained_attention_model

        labels = [label for _, label in SegmentationLogic.segment_labels(segmentation_node)]
        if not labels:
            raise InputError("the segmentation has no segments; add one per structure to label first.")
        folder = self._next_folder("start")
        try:
            card = untrained_attention_model(
                [BACKGROUND, *labels], volume_node.GetSpacing(), folder / "model"
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.model = str(card.directory)
        return card

    def create_annotation_segmentation(self, volume_node, card: ModelCard) -> slicer.vtkMRMLSegmentationNode:
        """A segmentation on the volume's grid with one empty segment per label of the model,
        named, coloured and tagged with the label value the model uses (as ASDSeg's own)."""
        node = self.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(f"{volume_node.GetName()} labels")
        )
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        for label in card.foreground_labels:
            segment_id = node.GetSegmentation().AddEmptySegment("", label.name)
            apply_label(node.GetSegmentation().GetSegment(segment_id), label)
        return node

    # Labelled slices ------------------------------------------------------------------------

    @staticmethod
    def labelled_slices(segmentation_node) -> set[int]:
        text = segmentation_node.GetAttribute(LABELLED_SLICES_ATTRIBUTE)
        return set(json.loads(text)) if text else set()

    def mark_labelled(self, segmentation_node, indices: Sequence[int], labelled: bool = True) -> set[int]:
        """Count slices ``indices`` as labelled (or no longer); returns the labelled set."""
        dimensions = self._source_volume(segmentation_node).GetImageData().GetDimensions()
        bad = [index for index in indices if not 0 <= index < dimensions[2]]
        if bad:
            raise InputError(f"slice(s) {bad} are outside the volume's {dimensions[2]} slices.")
        slices = self.labelled_slices(segmentation_node)
        slices = slices | set(indices) if labelled else slices - set(indices)
        segmentation_node.SetAttribute(LABELLED_SLICES_ATTRIBUTE, json.dumps(sorted(slices)))
        return slices

    def suggestions(self, segmentation_node) -> list[dict]:
        """The last suggested slices, each with its ``status``: labelled or to label."""
        text = segmentation_node.GetAttribute(SUGGESTIONS_ATTRIBUTE)
        rows = json.loads(text) if text else []
        labelled = self.labelled_slices(segmentation_node)
        return [{**row, "status": "labelled" if row["slice"] in labelled else "to label"} for row in rows]

    @staticmethod
    def _source_volume(segmentation_node):
        """The segmentation's volume, which must hold voxels (the slices are that volume's)."""
        volume_node = SegmentationLogic.source_volume(segmentation_node)
        if volume_node is None or volume_node.GetImageData() is None:
            raise InputError(
                f"{segmentation_node.GetName()!r} is not tied to a volume; make it on the volume to label."
            )
        return volume_node

    def sparse_labels(
        self, segmentation_node, card: ModelCard | None = None
    ) -> tuple[SparseLabels, list[Label]]:
        """The segmentation's voxels (x, y, z) on its volume's grid with the labelled slices, and
        the labels they use. With ``card``, every segment must be one of the model's labels."""
        volume_node = self._source_volume(segmentation_node)
        slices = self.labelled_slices(segmentation_node)
        if not slices:
            raise InputError("no slice is marked labelled yet: label a slice and click 'Mark labelled'.")
        segment_labels = SegmentationLogic.segment_labels(segmentation_node)
        if card is not None:
            known = {label.value: label for label in card.foreground_labels}
            for _, label in segment_labels:
                if label.value not in known:
                    names = ", ".join(label.name for label in known.values())
                    raise InputError(
                        f"segment {label.name!r} is not one of the model's labels ({names}); remove it or "
                        "label with the segments the model was made for."
                    )
        array = SegmentationLogic.merged_label_map(segmentation_node, segment_labels, volume_node)
        sparse = SparseLabels(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.int64), slices)
        return sparse, [label for _, label in segment_labels]

    def export_labels(self, segmentation_node, path: str | Path, card: ModelCard | None = None) -> list[Path]:
        """Write the labelled slices as a NIfTI label map on the volume's grid, its label
        sidecars and ``<stem>.slices.json``, all or nothing; with ``card``, only if every segment
        is one of the model's labels (the files fine-tuning reads)."""
        sparse, labels = self.sparse_labels(segmentation_node, card)
        reference = image_from_volume_node(self._source_volume(segmentation_node))
        return write_sparse_labels(sparse, reference, [BACKGROUND, *labels], path)

    # Suggesting -----------------------------------------------------------------------------

    def start_suggest(
        self,
        segmentation_node,
        strategy: str = DEFAULT_STRATEGY,
        budget: int = 5,
        device: str = "auto",
        roi_node=None,
    ) -> SuggestRun:
        """Rank the unlabelled slices of the segmentation's volume with the model in use; with
        ``roi_node`` (a markups ROI) the model sees only the box and ranks only its slices."""
        card = self.model_card()
        volume_node = self._source_volume(segmentation_node)
        check_roi_node(roi_node)
        roi = roi_region(roi_node, volume_node)[0] if roi_node is not None else None
        folder = tempfile.TemporaryDirectory(prefix="activeannotate-", dir=self.temp_dir)
        paths = {
            name: Path(folder.name) / file for name, file in (("image", "image.nrrd"), ("output", "out.json"))
        }
        arguments = ["suggest", "--model", str(card.directory), "--image", str(paths["image"])]
        arguments += ["--strategy", strategy, "-k", str(budget), "--output", str(paths["output"])]
        arguments += ["--device", device, *(roi.cli_arguments() if roi is not None else [])]
        try:
            write_image(image_from_volume_node(volume_node), paths["image"], compress=False)
            if self.labelled_slices(segmentation_node):
                labels_path = Path(folder.name) / "labels.nii.gz"
                self.export_labels(segmentation_node, labels_path, card)
                arguments += ["--labels", str(labels_path)]
        except BaseException:
            folder.cleanup()
            raise
        return SuggestRun(volume_node, segmentation_node, arguments, folder, paths["output"], **self.child)

    def finish_suggest(self, run: SuggestRun) -> list[dict]:
        """Store the suggestion on the segmentation, mark the slices in the views and return
        the rows (slice, p_dsc, p_accuracy, disagreement_voxels, entropy, status), most wanted
        first."""
        try:
            run.wait_for_success("suggesting cancelled; nothing changed.")
            record = read_suggestions(run.output)
        finally:
            run.close()
        run.segmentation_node.SetAttribute(SUGGESTIONS_ATTRIBUTE, json.dumps(record["suggested"]))
        mark_suggestions(self.scene, run.volume_node, record["suggested"])
        return self.suggestions(run.segmentation_node)

    # Fine-tuning ----------------------------------------------------------------------------

    def _next_folder(self, prefix: str) -> Path:
        index = 1
        while (self.work_dir / f"{prefix}-{index:03d}").exists():
            index += 1
        folder = self.work_dir / f"{prefix}-{index:03d}"
        folder.mkdir(parents=True)
        return folder

    def start_finetune(
        self, segmentation_nodes: Sequence, steps: int = 200, device: str = "auto", roi_node=None
    ) -> FineTuneRun:
        """Fine-tune the model in use on the labelled slices of each segmentation (on its own
        volume) for ``steps`` steps; the new model goes to a new ``round-NNN`` folder. With
        ``roi_node`` (a markups ROI) each volume is trained on inside the box only."""
        if steps < 1:
            raise InputError(f"the number of fine-tuning steps must be positive, got {steps}.")
        card = self.model_card()
        check_roi_node(roi_node)
        volumes = [self._source_volume(segmentation_node) for segmentation_node in segmentation_nodes]
        regions = [roi_region(roi_node, volume)[0] for volume in volumes] if roi_node is not None else []
        folder = tempfile.TemporaryDirectory(prefix="activeannotate-", dir=self.temp_dir)
        images, labels = [], []
        try:
            for index, (segmentation_node, volume_node) in enumerate(zip(segmentation_nodes, volumes)):
                image_path = Path(folder.name) / f"image-{index}.nrrd"
                label_path = Path(folder.name) / f"labels-{index}.nii.gz"
                write_image(image_from_volume_node(volume_node), image_path, False)
                self.export_labels(segmentation_node, label_path, card)
                images.append(str(image_path))
                labels.append(str(label_path))
            output_dir = self._next_folder("round")
        except BaseException:
            folder.cleanup()
            raise
        arguments = ["finetune", "--model", str(card.directory), "--image", *images, "--labels", *labels]
        arguments += [argument for region in regions for argument in region.cli_arguments()]
        arguments += ["--steps", str(steps), "--output-dir", str(output_dir), "--device", device]
        arguments += ["--name", f"annotation-{output_dir.name}"]
        return FineTuneRun(output_dir, arguments, folder, **self.child)

    def finish_finetune(self, run: FineTuneRun) -> ModelCard:
        """Make the round's new model the model in use; a failed or cancelled round raises and
        leaves the previous model in use."""
        try:
            run.wait_for_success("fine-tuning cancelled; the model in use is unchanged.")
            card = find_model(str(run.output_dir / "model"))
            run.adopted = True
        finally:
            run.close()
        self.model = str(card.directory)
        return card
