"""ActiveAnnotate's logic: suggest slices, keep track of the labelled ones, fine-tune, export.

The annotator's labels are an ordinary segmentation node (edited with the Segment Editor); the
slices that count as labelled are stored on it as a node attribute, so they are saved with the
scene and a session can be resumed. Each suggestion pre-fills the suggested slices nobody has
drawn yet with the model's prediction, so the annotator corrects instead of drawing; the
prediction stays in the scene (a label map the segmentation references) and marking a slice
labelled records what the annotator changed there (:mod:`asdseg.active.annotator_effort`).
Suggesting and fine-tuning run the engine in a child process (``asdseg suggest`` / ``asdseg
finetune``) on files written to a temporary folder, so the caller only polls and Cancel is
immediate; the model in use changes only when a fine-tuning round has completed and its new
model has been read back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from asdseg.active.annotator_effort import SliceEffort, measure_effort
from asdseg.active.sparse_labels import SparseLabels, write_sparse_labels
from asdseg.active.strategies import DEFAULT_STRATEGY
from asdseg.active.suggestion_report import read_suggestions
from asdseg.background import FolderJob
from asdseg.errors import AsdsegError, InputError, ModelError
from asdseg.io.image_io import read_image, write_image
from asdseg.io.labels import Label
from asdseg.registry import find_model
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import WarmEngine

from . import label_arrays
from .slice_views import mark_suggestions
from ASDSegLib.roi_nodes import check_roi_node, roi_region
from ASDSegLib.segmentation_logic import SegmentationLogic, apply_label
from ASDSegLib.volume_nodes import image_from_volume_node

#: Segmentation node attributes (JSON): the labelled slices, the last suggestion, the slices
#: pre-filled with the prediction, and what the annotator changed per labelled slice.
LABELLED_SLICES_ATTRIBUTE = "ActiveAnnotate.LabelledSlices"
SUGGESTIONS_ATTRIBUTE = "ActiveAnnotate.Suggestions"
PREFILLED_SLICES_ATTRIBUTE = "ActiveAnnotate.PrefilledSlices"
EFFORT_ATTRIBUTE = "ActiveAnnotate.Effort"
BACKGROUND = Label(0, "background", (0, 0, 0))


class SuggestRun(FolderJob):
    def __init__(
        self, volume_node, segmentation_node, arguments, folder, output, prediction, **child
    ) -> None:
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.output = output
        self.prediction = prediction
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
        engine: WarmEngine | None = None,
    ) -> None:
        """``temp_dir``: where rounds write their inputs (see :class:`SegmentationLogic`).
        With ``engine`` (in Slicer, the session's) suggestions run in that warm engine; a
        fine-tuning round always runs in a process of its own: it would hold the engine for
        minutes, and the start-up it saves is a small part of it."""
        self.scene = scene
        self.work_dir = Path(work_dir)
        self.child = {"python_executable": python_executable, "environment": environment}
        self.temp_dir = temp_dir
        self.engine = engine
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

    @staticmethod
    def prefilled_slices(segmentation_node) -> set[int]:
        """The slices a suggestion filled with the prediction (labelled since, or not yet)."""
        text = segmentation_node.GetAttribute(PREFILLED_SLICES_ATTRIBUTE)
        return set(json.loads(text)) if text else set()

    @staticmethod
    def slice_effort(segmentation_node) -> dict[int, SliceEffort]:
        """What the annotator changed on each labelled slice, recorded when it was marked."""
        text = segmentation_node.GetAttribute(EFFORT_ATTRIBUTE)
        entries = json.loads(text) if text else {}
        return {int(index): SliceEffort.from_dict(entry) for index, entry in entries.items()}

    def mark_labelled(self, segmentation_node, indices: Sequence[int], labelled: bool = True) -> set[int]:
        """Count slices ``indices`` as labelled (or no longer); returns the labelled set. Each
        newly labelled slice gets its :class:`SliceEffort` against the stored prediction; a
        slice no longer labelled loses it."""
        volume_node = self._source_volume(segmentation_node)
        dimensions = volume_node.GetImageData().GetDimensions()
        bad = [index for index in indices if not 0 <= index < dimensions[2]]
        if bad:
            raise InputError(f"slice(s) {bad} are outside the volume's {dimensions[2]} slices.")
        slices = self.labelled_slices(segmentation_node)
        effort = self.slice_effort(segmentation_node)
        if labelled:
            effort.update(self._measure_effort(segmentation_node, volume_node, set(indices) - slices))
            slices = slices | set(indices)
        else:
            effort = {index: entry for index, entry in effort.items() if index not in indices}
            slices = slices - set(indices)
        segmentation_node.SetAttribute(LABELLED_SLICES_ATTRIBUTE, json.dumps(sorted(slices)))
        entries = {str(index): effort[index].to_dict() for index in sorted(effort)}
        segmentation_node.SetAttribute(EFFORT_ATTRIBUTE, json.dumps(entries))
        return slices

    def _measure_effort(self, segmentation_node, volume_node, indices: set[int]) -> dict[int, SliceEffort]:
        """The effort on slices ``indices`` as they are now, against the stored prediction; a
        slice counts as pre-filled only while that prediction is there to compare with."""
        if not indices:
            return {}
        corrected = label_arrays.annotation_array(segmentation_node, volume_node)
        prediction = self.prediction_array(segmentation_node)
        prefilled = self.prefilled_slices(segmentation_node) if prediction is not None else set()
        return {
            index: measure_effort(
                corrected[index], None if prediction is None else prediction[index], index in prefilled
            )
            for index in indices
        }

    def suggestions(self, segmentation_node) -> list[dict]:
        """The last suggested slices, each with its ``status`` (labelled, to correct: pre-filled
        with the prediction, or to label) and ``effort`` (a :class:`SliceEffort` once labelled)."""
        text = segmentation_node.GetAttribute(SUGGESTIONS_ATTRIBUTE)
        rows = json.loads(text) if text else []
        labelled = self.labelled_slices(segmentation_node)
        prefilled = self.prefilled_slices(segmentation_node)
        effort = self.slice_effort(segmentation_node)

        def status(index: int) -> str:
            if index in labelled:
                return "labelled"
            return "to correct" if index in prefilled else "to label"

        return [{**row, "status": status(row["slice"]), "effort": effort.get(row["slice"])} for row in rows]

    @staticmethod
    def suggestion_cells(row: dict) -> tuple[str, ...]:
        """A row of :meth:`suggestions` as the panel's table shows it: slice, P-DSC, voxels the
        two predictions disagree on (a dash for suggestions of earlier versions, which lack
        them), status and the annotator's changes."""
        disagreement = row.get("disagreement_voxels")
        return (
            str(row["slice"]),
            f"{row['p_dsc']:.3f}",
            "—" if disagreement is None else str(disagreement),
            row["status"],
            row["effort"].summary() if row["effort"] else "",
        )

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
        effort = self.slice_effort(segmentation_node)
        return write_sparse_labels(sparse, reference, [BACKGROUND, *labels], path, effort)

    # The prediction -------------------------------------------------------------------------

    prediction_node = staticmethod(label_arrays.prediction_node)
    prediction_array = staticmethod(label_arrays.prediction_array)

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
        files = (("image", "image.nrrd"), ("output", "out.json"), ("prediction", "prediction.nrrd"))
        paths = {name: Path(folder.name) / file for name, file in files}
        arguments = ["suggest", "--model", str(card.directory), "--image", str(paths["image"])]
        arguments += ["--strategy", strategy, "-k", str(budget), "--output", str(paths["output"])]
        arguments += ["--segmentation", str(paths["prediction"])]
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
        outputs = (paths["output"], paths["prediction"])
        return SuggestRun(
            volume_node, segmentation_node, arguments, folder, *outputs, **self.child, engine=self.engine
        )

    def finish_suggest(self, run: SuggestRun) -> list[dict]:
        """Store the suggestion and the prediction on the segmentation, pre-fill the suggested
        slices (see :meth:`_prefill`), mark the slices in the views and return the rows (slice,
        p_dsc, p_accuracy, disagreement_voxels, entropy, status, effort), most wanted first. A
        failed or cancelled run raises before the scene is touched."""
        try:
            run.wait_for_success("suggesting cancelled; nothing changed.")
            record = read_suggestions(run.output)
            prediction = sitk.GetArrayFromImage(read_image(run.prediction))
        finally:
            run.close()
        dimensions = tuple(reversed(run.volume_node.GetImageData().GetDimensions()))
        if prediction.shape != dimensions:
            raise AsdsegError(f"the engine's prediction is {prediction.shape}, the volume {dimensions}.")
        node = run.segmentation_node
        self._prefill(node, run.volume_node, prediction, [row["slice"] for row in record["suggested"]])
        node.SetAttribute(SUGGESTIONS_ATTRIBUTE, json.dumps(record["suggested"]))
        mark_suggestions(self.scene, run.volume_node, record["suggested"])
        return self.suggestions(node)

    def _prefill(self, segmentation_node, volume_node, prediction: np.ndarray, suggested: list[int]) -> None:
        """Fill each suggested slice that is neither labelled nor drawn on with the prediction
        ((k, j, i) label values), segment by segment, and keep the prediction in the scene.

        Label values no segment has are dropped: the annotator could not correct them. Slices
        pre-filled earlier and still not labelled keep the prediction they were filled with in
        the stored one, so that their effort is measured against what the annotator was shown.
        """
        segment_labels = SegmentationLogic.segment_labels(segmentation_node)
        values = [label.value for _, label in segment_labels]
        prediction = np.where(np.isin(prediction, values), prediction, 0).astype(prediction.dtype)
        annotation = label_arrays.annotation_array(segmentation_node, volume_node)
        labelled = self.labelled_slices(segmentation_node)
        fill = sorted(index for index in suggested if index not in labelled and not annotation[index].any())
        prefilled = self.prefilled_slices(segmentation_node)
        previous = self.prediction_array(segmentation_node)
        if previous is not None and previous.shape == prediction.shape:
            kept = sorted(prefilled - labelled - set(fill))
            prediction[kept] = previous[kept]
        for segment_id, label in segment_labels:
            if (prediction[fill] == label.value).any():
                label_arrays.fill_slices(segmentation_node, volume_node, segment_id, label, prediction, fill)
        label_arrays.store_prediction(self.scene, segmentation_node, volume_node, prediction)
        segmentation_node.SetAttribute(PREFILLED_SLICES_ATTRIBUTE, json.dumps(sorted(prefilled | set(fill))))

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
