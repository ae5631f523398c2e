"""ASDSeg: segment the loaded MRI with a shipped model and show its confidence or SDM.

The widget is thin Qt glue over :class:`ASDSegLib.segmentation_logic.SegmentationLogic`, which
runs the ``asdseg`` engine in a PythonSlicer child process and fills the scene only once a run
has succeeded; the glue it shares with ActiveAnnotate is ASDSegLib.panel. The engine and its
Python dependencies are installed on first use, after the user confirms, never on loading.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
from slicer import vtkMRMLDisplayableNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

# Importing ASDSegLib first makes the engine importable from a source checkout, before any
# function below imports it.
from ASDSegLib.engine_runs import RunPoller, engine_environment, engine_logic, python_slicer
from ASDSegLib.installer import run_self_tests, skip_without_dependencies
from ASDSegLib.panel import ParameterNodeWidget, user_action

#: QSettings key of the folder the user's corrections accumulate in (see teach_logic).
CORRECTIONS_FOLDER_SETTING = "ASDSeg/CorrectionsFolder"


def default_corrections_folder() -> Path:
    """Beside the user's models: ``~/.asdseg/corrections`` (or under ``$ASDSEG_HOME``)."""
    from asdseg.registry import user_models_dir

    return user_models_dir().parent / "corrections"


#
# ASDSeg
#


class ASDSeg(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ASDSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerASDSeg developers"]
        self.parent.helpText = (
            "Segments the left atrium or the pelvic organs (bladder, prostate, rectum) on MRI with a "
            "shipped deep-learning model, and shows a voxel-wise confidence map or signed distance map "
            "over the image. Pick a volume and a model, click Segment, review, export to NIfTI."
        )
        self.parent.acknowledgementText = (
            "Reproduces ASDNet (Nie et al., MICCAI 2018), SASSNet (Li et al., MICCAI 2020), "
            "difficulty-aware attention with confidence learning, and attention-guided active learning."
        )


#
# ASDSegParameterNode
#


@parameterNodeWrapper
class ASDSegParameterNode:
    """The panel's state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    #: A markups ROI. Slicer 5.8 has vtkMRMLMarkupsROINode only once its Markups module is
    #: loaded, after this file runs, so the field takes the core base class; the roiSelector
    #: (nodeTypes in the .ui) offers ROIs only, and is bound by ParameterNodeWidget.
    roi: vtkMRMLDisplayableNode
    modelName: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    precision: Annotated[str, Choice(["auto", "fp32", "bf16", "fp16"])] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.95)] = 0.5
    largestComponent: bool = True
    mirroring: bool = True
    newSegmentation: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    overlay: Annotated[str, Choice(["none", "confidence", "sdm"])] = "confidence"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    #: The name the taught model is installed under; empty: the model's name with -site1.
    siteName: str = ""
    teachSteps: Annotated[int, WithinRange(10, 100000)] = 200


#
# ASDSegWidget
#


class ASDSegWidget(ParameterNodeWidget):
    libraries = ("ASDSegLib",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._devices = RunPoller(lambda _query: None, self.onDevicesQueried)

    def setupPanel(self) -> None:
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/ASDSeg.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = ASDSegLogic()

        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.addRoiButton.clicked.connect(self.onAddRoi)
        self.ui.segmentButton.clicked.connect(self.onSegmentOrCancel)
        self.ui.overlaySelector.currentIndexChanged.connect(self.onOverlayChanged)
        self.ui.overlayOpacitySliderWidget.valueChanged.connect(self.onOverlayChanged)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.markCheckedButton.clicked.connect(self.onMarkChecked)
        self.ui.teachButton.clicked.connect(self.onTeachOrCancel)
        folder = self.ui.correctionsFolderPathLineEdit
        folder.filters = ctk.ctkPathLineEdit.Dirs
        folder.currentPath = qt.QSettings().value(CORRECTIONS_FOLDER_SETTING, "")
        self.ui.progressBar.hide()

    def enter(self) -> None:
        super().enter()
        if self.logic is not None:
            with user_action("Listing the models"):
                self.refreshModels()

    def cleanup(self) -> None:
        super().cleanup()
        query = self._devices.stop()
        if query is not None:
            query.cancel()

    # Engine and models ---------------------------------------------------------------------

    def refreshModels(self) -> None:
        """Show what is missing, or list the models from their cards (torch is not imported
        into Slicer for that) and ask a child process which devices torch sees."""
        if self.showMissingDependencies():
            self.updateGUIFromParameterNode()
            return
        from asdseg.registry import DEFAULT_MODEL, available_models

        self.queryDevices()
        cards = available_models()
        if not cards:
            self.ui.statusLabel.text = "No model is installed; see 'Where models live' in the README."
        saved = self._parameterNode.modelName if self._parameterNode else ""
        self.listModels(sorted(cards), saved or DEFAULT_MODEL)  # the default model unless one was chosen

    def queryDevices(self) -> None:
        """Once per session: torch's view of the GPUs, asked in the warm engine (a child, so that
        a slow or broken CUDA driver cannot freeze or break Slicer), which it also starts."""
        if self._devices.job is not None or self.ui.deviceInfoLabel.text:
            return
        from ASDSegLib.engine_runs import warm_job

        self.ui.deviceInfoLabel.text = "Asking torch which devices it can use..."
        self._devices.start(warm_job(["devices"], progress=False))

    def onDevicesQueried(self, query) -> None:
        from asdseg.background import JobState

        if query.wait() is JobState.SUCCEEDED and query.output:
            self.ui.deviceInfoLabel.text = query.output[-1]
        else:
            logging.warning("ASDSeg: could not query the devices: %s", query.error)
            self.ui.deviceInfoLabel.text = "could not query the GPUs (see the log); the CPU will be used"

    def onModelChanged(self, _index=None) -> None:
        name = self.ui.modelSelector.currentText
        if self._parameterNode and name:
            self._parameterNode.modelName = name
        self.ui.modelSummaryLabel.text = self.logic.modelSummary(name) if name else ""
        self.updateGUIFromParameterNode()

    # Running -------------------------------------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self.currentRun is not None
        ready = bool(parameters and parameters.inputVolume and parameters.modelName)
        teaching = type(self.currentRun).__name__ == "TeachRun"
        self.ui.segmentButton.text = "Cancel" if running and not teaching else "Segment"
        self.ui.segmentButton.enabled = (running and not teaching) or (
            ready and not running and not self.ui.installDependenciesButton.visible
        )
        self.ui.segmentButton.toolTip = "" if ready or running else "Select an input volume and a model."
        self.ui.exportButton.enabled = bool(parameters and parameters.outputSegmentation) and not running
        self.ui.addRoiButton.enabled = bool(parameters and parameters.inputVolume) and not running
        corrected = bool(parameters and parameters.outputSegmentation)
        self.ui.teachButton.text = "Stop teaching" if teaching else "Teach"
        self.ui.teachButton.enabled = teaching or (corrected and not running)
        self.ui.markCheckedButton.enabled = corrected and not running

    def onAddRoi(self) -> None:
        parameters = self._parameterNode
        with user_action("Adding a region of interest"):
            segmentation = self.logic.segmentation
            parameters.roi = segmentation.add_roi(parameters.inputVolume, parameters.modelName or None)

    def onSegmentOrCancel(self) -> None:
        if self.cancelRunning("Cancelling..."):
            return
        parameters = self._parameterNode
        with user_action("Starting the segmentation"):
            run = self.logic.segmentation.start(
                parameters.inputVolume,
                parameters.modelName,
                self.logic.runOptions(parameters),
                roi_node=parameters.roi,
            )
            self.startPolling(run, "Starting the engine...")

    def finishRun(self, run) -> None:
        if type(run).__name__ == "TeachRun":
            self.finishTeach(run)
            return
        parameters = self._parameterNode

        def finish():
            target = parameters.outputSegmentation
            if target is not None and self.logic.segmentation.source_volume(target) is not run.volume_node:
                target = None  # made for another volume: find or create this volume's own
            return self.logic.segmentation.finish(run, target, parameters.newSegmentation)

        cancelled, failed = "Cancelled; the scene was not changed.", "Failed; the scene was not changed."
        outputs = self.readResults(finish, "Segmentation", failed, cancelled)
        if outputs is not None:
            parameters.outputSegmentation = outputs.segmentation_node
            self.showOverlay()
            warnings = "".join(f"\nWarning: {warning}" for warning in outputs.warnings)
            self.ui.statusLabel.text = "Done." + warnings

    # Teaching -----------------------------------------------------------------------------

    def onMarkChecked(self) -> None:
        parameters = self._parameterNode
        index = self.sliceInRedView(
            parameters.inputVolume, "The red view is not on one of the volume's axial slices."
        )
        if index is None:
            return
        with user_action(f"Marking slice {index} as right"):
            checked = self.logic.teach.mark_checked(parameters.outputSegmentation, [index])
            self.ui.statusLabel.text = f"Slice {index} counts as checked ({len(checked)} checked)."

    def onTeachOrCancel(self) -> None:
        if self.cancelRunning("Stopping..."):
            return
        parameters = self._parameterNode
        folder = self.ui.correctionsFolderPathLineEdit.currentPath or str(default_corrections_folder())
        with user_action("Starting to teach"):
            qt.QSettings().setValue(CORRECTIONS_FOLDER_SETTING, folder)
            run = self.logic.teach.start_teach(
                parameters.outputSegmentation,
                folder,
                parameters.siteName.strip() or None,
                parameters.teachSteps,
                parameters.device,
            )
            self.startPolling(run, f"Teaching {run.site_name}...")

    def finishTeach(self, run) -> None:
        outcome = self.readResults(
            lambda: self.logic.teach.finish_teach(run),
            "Teaching",
            failed="Teaching failed; the models are unchanged.",
            log="teaching failed",
        )
        if outcome is None:
            return
        self.ui.statusLabel.text = outcome.message()
        if outcome.installed is not None:
            self._parameterNode.modelName = outcome.installed.name
            self.refreshModels()  # the new version is picked; the original stays listed
        else:
            slicer.util.warningDisplay(outcome.message())

    # Overlay and export --------------------------------------------------------------------

    def onOverlayChanged(self, _value=None) -> None:
        self.showOverlay()

    def showOverlay(self) -> None:
        """Reads the widgets, not the parameter node: this slot and the parameter node's own
        binding answer the same signal, in no guaranteed order."""
        from asdseg.errors import InputError

        parameters = self._parameterNode
        if not parameters or not parameters.outputSegmentation:
            return
        with user_action("Showing the overlay"):
            try:
                self.logic.segmentation.show_overlay(
                    parameters.outputSegmentation,
                    self.ui.overlaySelector.currentText,
                    self.ui.overlayOpacitySliderWidget.value,
                )
            except InputError as error:
                self.ui.statusLabel.text = str(error)

    def onExport(self) -> None:
        self.exportToFile(
            self._parameterNode.outputSegmentation,
            "Export segmentation to NIfTI",
            lambda node, path: self.logic.segmentation.export_segmentation(node, path),
        )


#
# ASDSegLogic
#


class ASDSegLogic(ScriptedLoadableModuleLogic):
    """The parameter node, plus the Qt-free :class:`SegmentationLogic` on Slicer's scene
    (created once the engine's dependencies are installed)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentation = None
        self._teach = None

    def getParameterNode(self) -> ASDSegParameterNode:
        return ASDSegParameterNode(super().getParameterNode())

    @property
    def segmentation(self):
        if self._segmentation is None:
            from ASDSegLib.engine_runs import session_engine
            from ASDSegLib.segmentation_logic import SegmentationLogic

            self._segmentation = engine_logic(SegmentationLogic, engine=session_engine())
        return self._segmentation

    @property
    def teach(self):
        if self._teach is None:
            from ASDSegLib.teach_logic import TeachLogic

            self._teach = engine_logic(TeachLogic)
        return self._teach

    @staticmethod
    def runOptions(parameters: ASDSegParameterNode):
        from ASDSegLib.segmentation_logic import RunOptions

        return RunOptions(
            device=parameters.device,
            precision=parameters.precision,
            overlap=parameters.overlap,
            largest_component=parameters.largestComponent,
            mirroring=parameters.mirroring,
        )

    @staticmethod
    def modelSummary(model_name: str) -> str:
        """The model card's summary, read without importing torch."""
        from asdseg.errors import AsdsegError
        from asdseg.registry import find_model

        try:
            return find_model(model_name).summary()
        except AsdsegError as error:
            return str(error)


#
# ASDSegTest
#


class ASDSegTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, or ctest in a Slicer build): segments a small phantom
    with the demo model, checks the nodes and the NIfTI export, and that cancel changes nothing."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        run_self_tests(self, self.test_segment_export_and_cancel)

    def test_segment_export_and_cancel(self) -> None:
        """In a model folder of its own, so that the user's models stay as they were; the demo
        model is trained in a PythonSlicer child, as the engine runs."""
        skip_without_dependencies(self)
        from ASDSegLib.segmentation_logic import SegmentationLogic
        from ASDSegLib.self_test import install_demo_model, isolated_model_home

        with isolated_model_home(slicer.app.temporaryPath, engine_environment()) as (folder, environment):
            self.delayDisplay("Training the demo model in a child process (about a minute)")
            card = install_demo_model(python_slicer(), environment)
            logic = SegmentationLogic(slicer.mrmlScene, python_slicer(), environment, folder)
            self.check_segment_export_and_cancel(logic, card, folder)
        self.delayDisplay("Test passed")

    def check_segment_export_and_cancel(self, logic, card, folder: Path) -> None:
        import numpy as np
        import SimpleITK as sitk

        from asdseg.errors import CancelledError
        from asdseg.io.image_io import read_image, same_geometry
        from asdseg.phantoms import make_phantom, phantom_image

        from ASDSegLib.segmentation_logic import RunOptions
        from ASDSegLib.volume_nodes import update_volume_node_from_image

        image, _ = phantom_image(make_phantom(shape=(40, 36, 30), seed=3), spacing=(0.95, 1.05, 1.1))
        volume_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        update_volume_node_from_image(volume_node, image)

        self.delayDisplay("Segmenting")
        outputs = logic.segment(volume_node, card.name, RunOptions(largest_component=True))
        segmentation = outputs.segmentation_node
        names = [
            segmentation.GetSegmentation().GetNthSegment(index).GetName()
            for index in range(segmentation.GetSegmentation().GetNumberOfSegments())
        ]
        self.assertEqual(names, [label.name for label in card.foreground_labels])
        self.assertIsNotNone(outputs.sdm_node)

        self.delayDisplay("Exporting")
        path = folder / "phantom-seg.nii.gz"
        logic.export_segmentation(segmentation, path)
        exported = read_image(path)
        self.assertTrue(same_geometry(exported, image, tolerance=1e-4))
        values = set(np.unique(sitk.GetArrayViewFromImage(exported)).tolist())
        self.assertEqual(values, {0, *(label.value for label in card.foreground_labels)})

        self.delayDisplay("Cancelling a run")
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        run = logic.start(volume_node, card.name)
        run.cancel()
        with self.assertRaises(CancelledError):
            logic.finish(run)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes_before)
