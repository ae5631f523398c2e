"""ASDSeg's logic: a volume node in, a segmentation node and overlay volumes out.

The engine runs in a child process (:class:`segmentation_run.SegmentationRun`) on a copy of the
volume written to a temporary folder, so the caller's thread only polls and a cancel is
immediate. The scene is touched only once the run has succeeded and its outputs are read and
checked; a cancelled or failed run leaves the scene exactly as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import slicer

from asdseg.background import JobProgress, JobState
from asdseg.errors import AsdsegError, InputError, ModelError
from asdseg.io.image_io import check_volume_shape
from asdseg.io.labels import Label
from asdseg.registry import available_models, find_model
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import WarmEngine

from . import segments
from .overlays import OVERLAY_KINDS, sdm_window, show_in_slice_views, style_overlay_node
from .roi_nodes import add_roi_for_volume, check_roi_node, roi_region
from .segmentation_run import EngineOutputs, RunOptions, SegmentationRun
from .segments import apply_label
from .volume_nodes import image_from_volume_node, oriented_image_from_array, update_volume_node_from_image

#: Segmentation node attribute naming the model that made it (marks ASDSeg's own nodes).
MODEL_ATTRIBUTE = "ASDSeg.Model"
#: Node reference roles from the segmentation node to its overlay volumes.
OVERLAY_REFERENCE_ROLES = {"confidence": "ASDSeg.confidence", "sdm": "ASDSeg.sdm"}
#: Node reference role from the segmentation node to the label map the model predicted, kept
#: (hidden) so that the user's corrections can be found by difference (ASDSeg's Teach).
PREDICTION_REFERENCE_ROLE = "ASDSeg.prediction"
#: Teach's records about the corrections of the prediction in place, which a new run replaces:
#: the slices checked as right, and the corrections folder entry they were saved to (the next
#: corrections of this volume go to a new entry, so the saved ones are kept).
CORRECTION_ATTRIBUTES = ("ASDSeg.CheckedSlices", "ASDSeg.CorrectionsEntry")
#: The label values whose own SDM volume the segmentation references (comma-separated).
ORGAN_SDMS_ATTRIBUTE = "ASDSeg.organSDMs"


@dataclass
class SegmentationOutputs:
    """The nodes a finished run created or updated."""

    segmentation_node: slicer.vtkMRMLSegmentationNode
    confidence_node: slicer.vtkMRMLScalarVolumeNode | None = None
    #: The SDM overlay: the organ's signed distance, or with several organs the distance to the
    #: nearest organ surface.
    sdm_node: slicer.vtkMRMLScalarVolumeNode | None = None
    #: With several organs, each organ's own signed distance map, by organ name.
    organ_sdm_nodes: dict[str, slicer.vtkMRMLScalarVolumeNode] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class SegmentationLogic:
    """Everything the ASDSeg panel does, on an explicit MRML scene and without Qt."""

    def __init__(
        self,
        scene: slicer.vtkMRMLScene,
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        temp_dir: str | Path | None = None,
        engine: WarmEngine | None = None,
    ) -> None:
        """``python_executable`` and ``environment`` are the child process's (default: this
        Python and :func:`asdseg.background.engine_environment`); in Slicer, PythonSlicer and
        Slicer's start-up environment. Runs keep their files in ``temp_dir`` (default: the
        system's); in Slicer, Slicer's temporary folder, which the user can move to a path
        without non-ASCII characters, unlike Windows' own. With ``engine`` (in Slicer, the
        session's), segmentations run in that warm engine instead of a process each."""
        self.scene = scene
        self.python_executable = python_executable
        self.environment = environment
        self.temp_dir = temp_dir
        self.engine = engine

    # Models ---------------------------------------------------------------------------------

    @staticmethod
    def available_models() -> dict[str, ModelCard]:
        return available_models()

    @staticmethod
    def model_card(model_name: str | None) -> ModelCard:
        if not model_name:
            raise ModelError(
                "no model is selected. Install one (asdseg models install CARD.json, or copy a "
                "model folder into ~/.asdseg/models) and pick it in the model list."
            )
        return find_model(model_name)

    # Running --------------------------------------------------------------------------------

    def check_input_volume(self, volume_node: slicer.vtkMRMLNode | None) -> None:
        """Raise :class:`InputError` saying what to do when ``volume_node`` cannot be segmented."""
        if volume_node is None:
            if self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0:
                raise InputError("the scene has no volume; load an MRI first (File > Add Data).")
            raise InputError("no input volume is selected; pick the MRI to segment.")
        name = volume_node.GetName()
        if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(
                f"{name!r} is a {volume_node.GetClassName()}; pick a scalar (grey-level) volume."
            )
        if volume_node.GetImageData() is None:
            raise InputError(f"{name!r} has no voxels; load the image data first.")
        transform = volume_node.GetParentTransformNode()
        if transform is not None and not transform.IsTransformToWorldLinear():
            raise InputError(f"{name!r} is under a non-linear transform; harden the transform first.")
        check_volume_shape(image_from_volume_node(volume_node), repr(name))

    def add_roi(self, volume_node: slicer.vtkMRMLNode | None, model_name: str | None = None):
        """A new markups ROI centred on ``volume_node``, the size of the volumes the model was
        trained on (when its card says), for the user to move over the organ."""
        self.check_input_volume(volume_node)
        card = self.model_card(model_name) if model_name else None
        return add_roi_for_volume(self.scene, volume_node, card)

    def start(
        self,
        volume_node: slicer.vtkMRMLNode | None,
        model_name: str | None,
        options: RunOptions | None = None,
        roi_node: slicer.vtkMRMLNode | None = None,
    ) -> SegmentationRun:
        """Check the input and start the engine; nothing in the scene changes. With ``roi_node``
        (a markups ROI) only the voxels inside it are segmented, the rest is background."""
        options = options or RunOptions()
        self.check_input_volume(volume_node)
        options.check()
        check_roi_node(roi_node)
        roi, roi_warnings = roi_region(roi_node, volume_node) if roi_node is not None else (None, [])
        card = self.model_card(model_name)
        return SegmentationRun(
            volume_node,
            card,
            options,
            self.python_executable,
            self.environment,
            roi,
            roi_warnings,
            self.temp_dir,
            self.engine,
        )

    def finish(
        self,
        run: SegmentationRun,
        segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
        new_node: bool = False,
    ) -> SegmentationOutputs:
        """Put a finished run's outputs into the scene and delete its temporary files.

        The segmentation goes into ``segmentation_node`` when given, else into the segmentation
        an earlier run made for the same volume and model, else (or with ``new_node``) into a
        new node. A failed or cancelled run raises and changes nothing.
        """
        try:
            run.wait_for_success("segmentation cancelled; the scene was not changed.")
            outputs = run.read_outputs()
            target = segmentation_node
            if target is None and not new_node:
                target = self.find_segmentation(run.volume_node, run.card.name)
            result = self._apply(run, outputs, target)
            result.warnings = [*run.roi_warnings, *run.job.warnings]
            return result
        finally:
            run.close()

    def segment(
        self,
        volume_node: slicer.vtkMRMLNode | None,
        model_name: str | None,
        options: RunOptions | None = None,
        segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
        new_node: bool = False,
        progress: Callable[[JobProgress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll_interval: float = 0.1,
        roi_node: slicer.vtkMRMLNode | None = None,
    ) -> SegmentationOutputs:
        """Start, wait (reporting progress, honouring ``should_cancel``) and finish in one call,
        for scripts and tests; the module panel drives :meth:`start` and :meth:`finish` from a
        timer instead."""
        run = self.start(volume_node, model_name, options, roi_node)
        try:
            while run.state() is JobState.RUNNING:
                if should_cancel is not None and should_cancel():
                    run.cancel()
                    break
                if progress is not None:
                    progress(run.progress)
                time.sleep(poll_interval)
        except BaseException:
            run.close()
            raise
        return self.finish(run, segmentation_node, new_node)

    # Scene ----------------------------------------------------------------------------------

    def find_segmentation(
        self, volume_node: slicer.vtkMRMLScalarVolumeNode, model_name: str
    ) -> slicer.vtkMRMLSegmentationNode | None:
        """The segmentation an earlier run of ``model_name`` made for ``volume_node``."""
        nodes = self.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if node.GetAttribute(MODEL_ATTRIBUTE) == model_name and self.source_volume(node) is volume_node:
                return node
        return None

    def _apply(
        self,
        run: SegmentationRun,
        outputs: EngineOutputs,
        segmentation_node: slicer.vtkMRMLSegmentationNode | None,
    ) -> SegmentationOutputs:
        volume_node = run.volume_node
        created: list[slicer.vtkMRMLNode] = []
        backup = None
        self.scene.StartState(slicer.vtkMRMLScene.BatchProcessState)
        try:
            if segmentation_node is None:
                segmentation_node = self._add_node(
                    "vtkMRMLSegmentationNode", f"{volume_node.GetName()} ASDSeg"
                )
                segmentation_node.CreateDefaultDisplayNodes()
                created.append(segmentation_node)
            else:
                backup = slicer.vtkSegmentation()
                backup.DeepCopy(segmentation_node.GetSegmentation())
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segmentation_node.SetAttribute(MODEL_ATTRIBUTE, run.card.name)
            segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            self._fill_segments(segmentation_node, outputs.label_map, run.card.labels, volume_node)
            self._keep_prediction(segmentation_node, outputs.label_map, volume_node, created)
            for attribute in CORRECTION_ATTRIBUTES:
                segmentation_node.RemoveAttribute(attribute)
            result = SegmentationOutputs(segmentation_node)
            for kind, image in (("confidence", outputs.confidence), ("sdm", outputs.sdm)):
                node = self._overlay_node(segmentation_node, kind, image, volume_node, created)
                setattr(result, f"{kind}_node", node)
            result.organ_sdm_nodes = self._organ_sdm_nodes(
                segmentation_node, run.card.foreground_labels, outputs.organ_sdms, volume_node, created
            )
            return result
        except BaseException:
            for node in created:
                self.scene.RemoveNode(node)
            if backup is not None:
                segmentation_node.GetSegmentation().DeepCopy(backup)
            raise
        finally:
            self.scene.EndState(slicer.vtkMRMLScene.BatchProcessState)

    def _add_node(self, class_name: str, name: str) -> slicer.vtkMRMLNode:
        return self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))

    @staticmethod
    def _fill_segments(
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        label_map: sitk.Image,
        labels: list[Label],
        volume_node: slicer.vtkMRMLScalarVolumeNode,
    ) -> None:
        """Replace the node's segments by one per foreground label, in the card's order, named
        and coloured as the card says; labels the model did not find get an empty segment so
        that the annotator can still draw them."""
        segmentation = segmentation_node.GetSegmentation()
        segmentation.RemoveAllSegments()
        array = sitk.GetArrayFromImage(label_map)
        oriented = oriented_image_from_array(array, volume_node)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if array.any() and not logic.ImportLabelmapToSegmentationNode(oriented, segmentation_node, "", ""):
            raise AsdsegError("Slicer could not import the label map into the segmentation.")
        imported = {
            segmentation.GetNthSegment(index).GetLabelValue(): segmentation.GetNthSegmentID(index)
            for index in range(segmentation.GetNumberOfSegments())
        }
        foreground = [label for label in labels if label.value != 0]
        for index, label in enumerate(foreground):
            segment_id = imported.get(label.value) or segmentation.AddEmptySegment("", label.name)
            apply_label(segmentation.GetSegment(segment_id), label)
            segmentation.SetSegmentIndex(segment_id, index)
        unknown = set(imported) - {label.value for label in foreground}
        if unknown:
            raise AsdsegError(
                f"the engine wrote label values {sorted(unknown)} that the model card does not name."
            )

    def _keep_prediction(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        label_map: sitk.Image,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        created: list[slicer.vtkMRMLNode],
    ) -> None:
        """The model's label map as a label map volume referenced by the segmentation, replaced
        by every run. It is left out of the Data module's tree (and the panel's selectors take no
        label maps) but not hidden from editors: Slicer's Save dialog skips those, and a resumed
        session needs it to find the corrections."""
        node = segmentation_node.GetNodeReference(PREDICTION_REFERENCE_ROLE)
        if node is None:
            node = self._add_node("vtkMRMLLabelMapVolumeNode", f"{volume_node.GetName()} ASDSeg prediction")
            constants = slicer.vtkMRMLSubjectHierarchyConstants
            node.SetAttribute(constants.GetSubjectHierarchyExcludeFromTreeAttributeName(), "1")
            created.append(node)
            segmentation_node.SetNodeReferenceID(PREDICTION_REFERENCE_ROLE, node.GetID())
        update_volume_node_from_image(node, label_map)

    def _overlay_node(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        kind: str,
        image: sitk.Image | None,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        created: list[slicer.vtkMRMLNode],
    ) -> slicer.vtkMRMLScalarVolumeNode | None:
        """Create or update the confidence or SDM volume referenced by the segmentation; drop
        the reference when this model has no such output."""
        role = OVERLAY_REFERENCE_ROLES[kind]
        if image is None:
            segmentation_node.RemoveNodeReferenceIDs(role)
            return None
        suffix = "confidence" if kind == "confidence" else "signed distance"
        return self._referenced_map(
            segmentation_node, role, f"{volume_node.GetName()} {suffix}", kind, image, volume_node, created
        )

    def _organ_sdm_nodes(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        organs: list[Label],
        images: dict[int, sitk.Image],
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        created: list[slicer.vtkMRMLNode],
    ) -> dict[str, slicer.vtkMRMLScalarVolumeNode]:
        """With several organs, one SDM volume per organ, named after it and referenced by the
        segmentation (role ``ASDSeg.sdm.<label value>``); references of organs this model does
        not give are dropped."""
        shown = {label.value: label for label in organs if label.value in images} if len(images) > 1 else {}
        before = segmentation_node.GetAttribute(ORGAN_SDMS_ATTRIBUTE) or ""
        for value in {int(text) for text in before.split(",") if text} - set(shown):
            segmentation_node.RemoveNodeReferenceIDs(f"{OVERLAY_REFERENCE_ROLES['sdm']}.{value}")
        segmentation_node.SetAttribute(ORGAN_SDMS_ATTRIBUTE, ",".join(str(value) for value in shown))
        return {
            label.name: self._referenced_map(
                segmentation_node,
                f"{OVERLAY_REFERENCE_ROLES['sdm']}.{value}",
                f"{volume_node.GetName()} signed distance {label.name}",
                "sdm",
                images[value],
                volume_node,
                created,
            )
            for value, label in shown.items()
        }

    def _referenced_map(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        role: str,
        name: str,
        kind: str,
        image: sitk.Image,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        created: list[slicer.vtkMRMLNode],
    ) -> slicer.vtkMRMLScalarVolumeNode:
        """The segmentation's ``role`` volume (created as ``name`` the first time), holding
        ``image`` on the volume's grid, styled as a ``kind`` map."""
        node = segmentation_node.GetNodeReference(role)
        if node is None:
            node = self._add_node("vtkMRMLScalarVolumeNode", name)
            created.append(node)
            segmentation_node.SetNodeReferenceID(role, node.GetID())
        update_volume_node_from_image(node, sitk.Cast(image, sitk.sitkFloat32))
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        window = (0.0, 1.0) if kind == "confidence" else sdm_window(sitk.GetArrayViewFromImage(image))
        style_overlay_node(node, kind, window)
        return node

    def show_overlay(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        kind: str,
        opacity: float = 0.5,
    ) -> slicer.vtkMRMLScalarVolumeNode | None:
        """Show the segmentation's confidence or SDM volume over its source volume in every
        slice view (``kind="none"`` hides it). Returns the volume shown."""
        if kind not in OVERLAY_KINDS:
            raise InputError(f"unknown overlay {kind!r}; choose one of {', '.join(OVERLAY_KINDS)}.")
        foreground = None
        if kind != "none":
            foreground = segmentation_node.GetNodeReference(OVERLAY_REFERENCE_ROLES[kind])
            if foreground is None:
                model = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
                raise InputError(f"model {model!r} gives no {kind} map; choose another overlay or model.")
        show_in_slice_views(self.scene, self.source_volume(segmentation_node), foreground, opacity)
        return foreground

    # Segments and export: segments.py, shared with ActiveAnnotate and Teach ----------------

    source_volume = staticmethod(segments.source_volume)
    segment_labels = staticmethod(segments.segment_labels)
    merged_label_map = staticmethod(segments.merged_label_map)
    export_segmentation = staticmethod(segments.export_segmentation)
