"""ActiveAnnotate: label only the slices the model is least sure of, and let it learn from them.

The loop: "Suggest slices" ranks the volume's unlabelled axial slices by how much the attention
U-Net's two predictions disagree there (by default P-DSC, their agreement, with picks kept
apart; or the number of voxels they disagree on, and other strategies); clicking a row shows
that slice in the red view; the
annotator draws it with the embedded Segment Editor and clicks "Mark labelled"; "Fine-tune"
trains the model on every labelled slice in a background process (progress, loss, Cancel), and
the new model is used for the next suggestion. Each suggested slice nobody has drawn on yet
starts as the model's prediction, so the annotator corrects rather than draws; what they changed
(voxels added and removed, Dice of the prediction) is shown per slice and exported with the labels.
The widget is thin Qt glue over :class:`ActiveAnnotateLib.annotation_logic.AnnotationLogic`, on
the base it shares with ASDSeg's (ASDSegLib.panel).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLDisplayableNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

# The glue ASDSeg's panel shares; importing ASDSegLib first makes the engine importable from a
# source checkout, before any function below imports it.
from ASDSegLib.engine_runs import engine_logic, python_slicer, session_engine
from ASDSegLib.installer import run_self_tests, skip_without_dependencies
from ASDSegLib.panel import ParameterNodeWidget, user_action

STRATEGIES = [
    "p-dsc",
    "p-dsc-spread",
    "p-accuracy",
    "disagreement",
    "entropy",
    "random",
    "foreground-random",
    "equal-interval",
]


#
# ActiveAnnotate
#


class ActiveAnnotate(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ActiveAnnotate"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["ASDSeg"]
        self.parent.contributors = ["SlicerASDSeg developers"]
        self.parent.helpText = (
            "Attention-guided active learning: the model suggests the axial slices it is least sure "
            "of and fills them with its prediction, you correct only those with the Segment Editor (what "
            "you changed is recorded per slice), and the model fine-tunes on them in the background. "
            "Export the labels to NIfTI at any time."
        )
        self.parent.acknowledgementText = (
            "Reproduces attention-guided active learning with P-DSC slice ranking (attention 3D U-Net)."
        )


#
# ActiveAnnotateParameterNode
#


@parameterNodeWrapper
class ActiveAnnotateParameterNode:
    """The panel's state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    #: A markups ROI: see ASDSegParameterNode.roi (5.8 has vtkMRMLMarkupsROINode only later).
    roi: vtkMRMLDisplayableNode
    annotation: vtkMRMLSegmentationNode
    modelName: str = ""
    strategy: Annotated[str, Choice(STRATEGIES)] = "p-dsc-spread"
    budget: Annotated[int, WithinRange(1, 100)] = 5
    fineTuneSteps: Annotated[int, WithinRange(1, 100000)] = 200
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


#
# ActiveAnnotateWidget
#


class ActiveAnnotateWidget(ParameterNodeWidget):
    libraries = ("ActiveAnnotateLib", "ASDSegLib")

    def setupPanel(self) -> None:
        self._engineReady = False
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/ActiveAnnotate.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = ActiveAnnotateLogic()

        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        # The editor paints into the round's labels on the round's volume only (bindSegmentEditor);
        # its own selectors would let the annotator pick another node.
        self.segmentEditorWidget.setSegmentationNodeSelectorVisible(False)
        self.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)

        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.newModelButton.clicked.connect(self.onNewModel)
        self.ui.newAnnotationButton.clicked.connect(self.onNewAnnotation)
        self.ui.suggestButton.clicked.connect(self.onSuggestOrCancel)
        self.ui.suggestionsTable.cellClicked.connect(self.onSuggestionClicked)
        self.ui.markLabelledButton.clicked.connect(self.onMarkLabelled)
        self.ui.fineTuneButton.clicked.connect(self.onFineTuneOrCancel)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.progressBar.hide()

    def enter(self) -> None:
        """As Slicer's Segment Editor module does: its keyboard shortcuts while the panel is shown."""
        super().enter()
        if self.logic is None:
            return
        self.segmentEditorWidget.installKeyboardShortcuts()
        self.segmentEditorWidget.updateWidgetFromMRML()
        with user_action("Listing the models"):
            self.refreshModels()

    def exit(self) -> None:
        """As Slicer's Segment Editor module does: no effect (Paint, Draw...) stays active in the
        slice views, and its shortcuts and view observations go, once the panel is left."""
        super().exit()
        if self.logic is None:
            return
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()

    def onSceneStartClose(self, caller, event) -> None:
        super().onSceneStartClose(caller, event)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.segmentEditorWidget.removeViewObservations()

    # Models --------------------------------------------------------------------------------

    def refreshModels(self) -> None:
        """The installed models (every one can rank slices and learn from them), plus the model in
        use when it is a fine-tuned round."""
        self._engineReady = not self.showMissingDependencies()
        if not self._engineReady:
            return
        from asdseg.registry import available_models

        saved = self._parameterNode.modelName if self._parameterNode else ""
        names = sorted(available_models())
        if saved and saved not in names:
            names.append(saved)
        self.listModels(names, saved)

    def onModelChanged(self, _index=None) -> None:
        name = self.ui.modelSelector.currentData
        if self._parameterNode is not None and name and self._engineReady:
            self._parameterNode.modelName = name
        self.updateGUIFromParameterNode()

    def useModel(self, card) -> None:
        self._parameterNode.modelName = str(card.directory)
        self.refreshModels()

    def onNewModel(self) -> None:
        parameters = self._parameterNode
        if not parameters.annotation or not parameters.inputVolume:
            slicer.util.errorDisplay(
                "Select the volume and the segmentation with the structures to label first."
            )
            return
        with user_action("Making a new model"):
            card = self.logic.annotation.new_model(parameters.annotation, parameters.inputVolume)
            self.useModel(card)
            self.ui.statusLabel.text = "New untrained model: label a few slices, mark them, then Fine-tune."

    def onNewAnnotation(self) -> None:
        parameters = self._parameterNode
        with user_action("Creating the labels segmentation"):
            annotation = self.logic.annotation
            card = annotation.model_card()
            parameters.annotation = annotation.create_annotation_segmentation(parameters.inputVolume, card)

    # State ---------------------------------------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self.currentRun is not None
        has_annotation = bool(parameters and parameters.annotation)
        ready = has_annotation and bool(parameters.modelName) and self._engineReady and not running
        kind = type(self.currentRun).__name__ if running else ""
        self.ui.suggestButton.text = "Cancel" if kind == "SuggestRun" else "Suggest slices"
        self.ui.fineTuneButton.text = "Cancel" if kind == "FineTuneRun" else "Fine-tune"
        self.ui.suggestButton.enabled = ready or kind == "SuggestRun"
        self.ui.fineTuneButton.enabled = ready or kind == "FineTuneRun"
        self.ui.markLabelledButton.enabled = has_annotation and not running
        self.ui.exportButton.enabled = has_annotation and not running
        self.ui.newAnnotationButton.enabled = bool(
            parameters and parameters.inputVolume and parameters.modelName
        )
        self.bindSegmentEditor()
        self.showSuggestions()

    def bindSegmentEditor(self) -> None:
        """The editor follows the round's labels and volume, and edits nothing without both."""
        parameters = self._parameterNode
        ready = bool(parameters and parameters.annotation and parameters.inputVolume)
        self.segmentEditorWidget.setSegmentationNode(parameters.annotation if ready else None)
        self.segmentEditorWidget.setSourceVolumeNode(parameters.inputVolume if ready else None)

    def showSuggestions(self) -> None:
        parameters = self._parameterNode
        annotation = parameters.annotation if parameters and self._engineReady else None
        logic = self.logic.annotation if annotation else None
        rows = logic.suggestions(annotation) if annotation else []
        table = self.ui.suggestionsTable
        table.setRowCount(len(rows))
        for position, row in enumerate(rows):
            for column, text in enumerate(logic.suggestion_cells(row)):
                table.setItem(position, column, qt.QTableWidgetItem(text))
        labelled = sorted(logic.labelled_slices(annotation)) if annotation else []
        listed = ", ".join(map(str, labelled)) or "none yet"
        self.ui.labelledLabel.text = f"Labelled slices ({len(labelled)}): {listed}"

    # Suggest, mark, export -----------------------------------------------------------------

    def onSuggestOrCancel(self) -> None:
        if self.cancelRunning():
            return
        parameters = self._parameterNode
        with user_action("Suggesting slices"):
            run = self.logic.annotation.start_suggest(
                parameters.annotation,
                parameters.strategy,
                parameters.budget,
                parameters.device,
                roi_node=parameters.roi,
            )
            self.startPolling(run, "Ranking slices...")

    def onSuggestionClicked(self, row: int, _column: int) -> None:
        from ActiveAnnotateLib.slice_views import show_slice

        parameters = self._parameterNode
        index = int(self.ui.suggestionsTable.item(row, 0).text())
        with user_action(f"Showing slice {index}"):
            show_slice(slicer.mrmlScene, parameters.inputVolume, index)

    def onMarkLabelled(self) -> None:
        parameters = self._parameterNode
        index = self.sliceInRedView(
            parameters.inputVolume,
            "The red view is not on one of the volume's slices: click a suggested slice first.",
        )
        if index is None:
            return
        with user_action(f"Marking slice {index} labelled"):
            self.logic.annotation.mark_labelled(parameters.annotation, [index])
            effort = self.logic.annotation.slice_effort(parameters.annotation).get(index)
            start = "the prediction" if effort and effort.prefilled else "an empty slice"
            changes = f"; your changes from {start}: {effort.summary()}" if effort else ""
            self.ui.statusLabel.text = f"Slice {index} counts as labelled{changes}."
            self.showSuggestions()

    def onExport(self) -> None:
        self.exportToFile(
            self._parameterNode.annotation,
            "Export labelled slices to NIfTI",
            lambda node, path: self.logic.annotation.export_labels(node, path),
        )

    # Fine-tuning ---------------------------------------------------------------------------

    def onFineTuneOrCancel(self) -> None:
        if self.cancelRunning("Cancelling..."):
            return
        parameters = self._parameterNode
        with user_action("Starting the fine-tuning"):
            run = self.logic.annotation.start_finetune(
                [parameters.annotation], parameters.fineTuneSteps, parameters.device, parameters.roi
            )
            self.startPolling(run, "Fine-tuning...")

    # Polling -------------------------------------------------------------------------------

    def progressText(self, run, progress) -> str | None:
        if "loss" not in progress.details:  # pseudo-labelling before the steps, or a Suggest
            return super().progressText(run, progress)
        loss, eta = progress.details["loss"], progress.details.get("eta_s", 0)
        step = f"step {progress.done} of {progress.total}"
        return f"Fine-tuning: {step}, loss {loss:.4f}, about {eta:.0f} s left"

    def finishRun(self, run) -> None:
        fine_tuning = type(run).__name__ == "FineTuneRun"

        def read():
            annotation = self.logic.annotation
            return annotation.finish_finetune(run) if fine_tuning else annotation.finish_suggest(run)

        what, unchanged = "Fine-tuning" if fine_tuning else "Suggesting", "the model in use is unchanged."
        result = self.readResults(read, what, f"Failed; {unchanged}", f"Cancelled; {unchanged}")
        if result is None:
            return
        if fine_tuning:
            self.useModel(result)
            self.ui.statusLabel.text = "Fine-tuned; suggesting the next slices with the new model."
            self.updateGUIFromParameterNode()
            self.onSuggestOrCancel()
            return
        self.ui.statusLabel.text = (
            "Suggested slices are marked in the views and start as the model's prediction: click a "
            "row to go there, correct the slice, then Mark labelled."
        )


#
# ActiveAnnotateLogic
#


class ActiveAnnotateLogic(ScriptedLoadableModuleLogic):
    """The parameter node, plus the Qt-free :class:`AnnotationLogic` on Slicer's scene (created
    once the engine's dependencies are installed)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._annotation = None

    def getParameterNode(self) -> ActiveAnnotateParameterNode:
        return ActiveAnnotateParameterNode(super().getParameterNode())

    @property
    def annotation(self):
        """The Qt-free logic, its model in use being the parameter node's (the panel's state)."""
        if self._annotation is None:
            from asdseg.registry import user_models_dir

            from ActiveAnnotateLib.annotation_logic import AnnotationLogic

            self._annotation = engine_logic(
                AnnotationLogic, user_models_dir().parent / "active-learning", engine=session_engine()
            )
        self._annotation.model = self.getParameterNode().modelName or None
        return self._annotation

    @staticmethod
    def segmentEditorNode():
        node = slicer.mrmlScene.GetSingletonNode("ActiveAnnotate", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("ActiveAnnotate")
            node = slicer.mrmlScene.AddNode(node)
        return node


#
# ActiveAnnotateTest
#


class ActiveAnnotateTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, or ctest in a Slicer build): one active-learning round on
    a phantom, from a new model: label, mark, fine-tune, suggest, export, and a cancelled round."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        run_self_tests(self, self.test_one_round)

    def test_one_round(self) -> None:
        skip_without_dependencies(self)
        import numpy as np
        import SimpleITK as sitk

        from asdseg.active.sparse_labels import read_sparse_labels
        from asdseg.errors import CancelledError
        from asdseg.phantoms import make_phantom, phantom_image

        from ActiveAnnotateLib.annotation_logic import AnnotationLogic
        from ActiveAnnotateLib.slice_views import show_slice
        from ASDSegLib.volume_nodes import (
            oriented_image_from_array,
            slice_under_view,
            update_volume_node_from_image,
        )

        image, label = phantom_image(make_phantom(shape=(48, 48, 32), seed=4))
        volume_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        update_volume_node_from_image(volume_node, image)
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as folder:
            logic = AnnotationLogic(
                slicer.mrmlScene, Path(folder) / "session", python_slicer(), temp_dir=folder
            )
            segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labels")
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", "ellipsoid")
            mask = (sitk.GetArrayFromImage(label) == 1).astype(np.uint8)
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                oriented_image_from_array(mask, volume_node),
                segmentation_node,
                segment_id,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
            )
            logic.new_model(segmentation_node, volume_node)

            self.delayDisplay("Marking slices 8 and 20 labelled")
            red = show_slice(slicer.mrmlScene, volume_node, 8)
            self.assertEqual(slice_under_view(volume_node, red), 8)
            logic.mark_labelled(segmentation_node, [8, 20])

            self.delayDisplay("Fine-tuning")
            previous = logic.model
            card = logic.finish_finetune(logic.start_finetune([segmentation_node], steps=5))
            self.assertNotEqual(logic.model, previous)
            self.assertEqual(logic.model, str(card.directory))

            self.delayDisplay("Suggesting")
            rows = logic.finish_suggest(logic.start_suggest(segmentation_node, "p-dsc", 3))
            self.assertLessEqual(len(rows), 3)
            self.assertFalse({8, 20} & {row["slice"] for row in rows})

            self.delayDisplay("Exporting")
            path = Path(folder) / "labels.nii.gz"
            logic.export_labels(segmentation_node, path)
            self.assertEqual(read_sparse_labels(path)[1].labelled_slices, {8, 20})

            self.delayDisplay("Cancelling a round")
            run = logic.start_finetune([segmentation_node], steps=5000)
            run.cancel()
            with self.assertRaises(CancelledError):
                logic.finish_finetune(run)
            self.assertEqual(logic.model, str(card.directory))
        self.delayDisplay("Test passed")
