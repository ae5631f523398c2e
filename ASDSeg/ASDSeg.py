"""ASDSeg: segment the loaded MRI with a shipped model and show its confidence or SDM.

The widget is thin Qt glue over :class:`ASDSegLib.segmentation_logic.SegmentationLogic`, which
runs the ``asdseg`` engine in a PythonSlicer child process and fills the scene only once a run
has succeeded. The engine and its Python dependencies are installed on first use, after the
user confirms, never when Slicer loads this module.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import unittest
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLDisplayableNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Makes the engine importable from a source checkout before any function below imports it.
import ASDSegLib  # noqa: F401

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
#: How often the panel polls a running segmentation, in milliseconds.
POLL_INTERVAL_MS = 150
#: QSettings key of the folder the user's corrections accumulate in (see teach_logic).
CORRECTIONS_FOLDER_SETTING = "ASDSeg/CorrectionsFolder"
#: The oldest Slicer these modules run in (Python 3.9); 5.10 and newer run Python 3.12.
MINIMUM_SLICER = (5, 8)


def default_corrections_folder() -> Path:
    """Beside the user's models: ``~/.asdseg/corrections`` (or under ``$ASDSEG_HOME``)."""
    from asdseg.registry import user_models_dir

    return user_models_dir().parent / "corrections"


def slicer_version_problem() -> str | None:
    """What to do when this Slicer is older than :data:`MINIMUM_SLICER`, else None."""
    running = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if running >= MINIMUM_SLICER:
        return None
    return (
        f"SlicerASDSeg needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer; this is "
        f"{slicer.app.applicationVersion}. Install the current Slicer from https://download.slicer.org."
    )


def missing_dependencies() -> list[str]:
    """Packages the engine needs that this Slicer's Python lacks or has in too old a version."""
    from ASDSegLib.dependencies import missing_requirements

    return missing_requirements(REQUIREMENTS_FILE)


def install_dependencies() -> bool:
    """Ask, then install torch through the PyTorch extension and the rest with pip, without
    replacing torch or Slicer's own packages. Returns True when everything is there afterwards;
    a failure is shown in a message box (pip's own messages are in the Python console)."""
    missing = missing_dependencies()
    if not missing:
        return True
    try:
        if missing[0].startswith("torch") and not install_torch():
            return False
        others = missing_dependencies()
        if others:
            question = f"ASDSeg needs these Python packages: {', '.join(others)}.\n\nInstall them now?"
            if not slicer.util.confirmOkCancelDisplay(question, "ASDSeg: install dependencies"):
                return False
            install_requirements()
    except (subprocess.CalledProcessError, RuntimeError, ValueError, OSError) as error:
        slicer.util.errorDisplay(
            f"Installing ASDSeg's dependencies failed: {error}\n\nThe Python console (View > Python "
            "Console) shows pip's messages. Check the internet connection and try again, or install "
            f"the packages of {REQUIREMENTS_FILE} yourself with slicer.util.pip_install."
        )
        return False
    still_missing = missing_dependencies()
    if still_missing:
        slicer.util.errorDisplay(
            f"ASDSeg still lacks {', '.join(still_missing)} after the installation; restart Slicer and "
            "try again."
        )
    return not still_missing


def install_torch() -> bool:
    """torch through the PyTorch extension, which picks the CUDA or CPU build for this machine."""
    from ASDSegLib.dependencies import TORCH_REQUIREMENT

    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay(
            "ASDSeg needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
            "restart Slicer and try again."
        )
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
    )
    return torch is not None


def install_requirements() -> None:
    """pip-install ``requirements.txt`` constrained to the installed torch, numpy and SimpleITK:
    a package that would replace one of them makes pip fail instead."""
    from ASDSegLib.dependencies import protected_constraints

    with tempfile.TemporaryDirectory(prefix="asdseg-", dir=slicer.app.temporaryPath) as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("\n".join(protected_constraints()) + "\n", encoding="utf-8")
        with slicer.util.displayPythonShell():
            slicer.util.pip_install(["-r", str(REQUIREMENTS_FILE), "-c", str(constraints)])


def python_slicer() -> str | None:
    """PythonSlicer runs the engine in a child process with Slicer's Python."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = (
        Path(slicer.app.slicerHome)
        / "bin"
        / ("PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer")
    )
    return str(candidate) if candidate.exists() else None


def engine_environment() -> dict[str, str]:
    """Slicer's start-up environment with the engine on PYTHONPATH, for PythonSlicer children."""
    from asdseg.background import engine_environment as with_engine

    return with_engine(slicer.util.startupEnvironment())


def suggested_export_path(node) -> str:
    """Where the export dialog starts: the home folder and the node's name as Slicer's own save
    dialog makes it file-safe (node names often hold ':' or '/'); the engine refuses an unsafe
    name the user types instead."""
    name = slicer.app.ioManager().forceFileNameValidCharacters(node.GetName()) or "segmentation"
    return str(Path(qt.QDir.homePath()) / f"{name}.nii.gz")


@contextmanager
def user_action(what: str):
    """Run a user action; any exception, not only the engine's own, is shown in a message box
    that says what failed (and logged with its traceback) instead of leaving the panel stale."""
    try:
        yield
    except Exception as error:
        logging.exception("ASDSeg: %s failed", what)
        slicer.util.errorDisplay(f"{what} failed: {error}")


def forget_library(package: str) -> None:
    """Drop ``package`` and its submodules from ``sys.modules`` so that they are read again
    from disk: Slicer's Reload re-reads only the module's main .py."""
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        del sys.modules[name]


def skip_without_dependencies(test: unittest.TestCase) -> None:
    """Self-tests skip (rather than fail) where the engine's dependencies are not installed,
    as on Slicer's build machines. Called inside each test method: ctest runs them directly."""
    missing = missing_dependencies()
    if missing:
        test.skipTest(f"ASDSeg's dependencies are not installed: {', '.join(missing)}")


def run_self_tests(test: unittest.TestCase, *methods) -> None:
    """``runTest`` for Reload and Test: runs each test method, reporting a skip as a message
    rather than as "Reload and Test failed"."""
    for method in methods:
        test.setUp()
        try:
            method()
        except unittest.SkipTest as reason:
            test.delayDisplay(f"Skipped: {reason}")


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


class ParameterNodeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The plumbing of Slicer's scripted-module template that this extension's panels share:
    the parameter node is bound to the .ui widgets and follows the scene (closed, re-opened),
    and one engine run at a time is polled by a timer. Subclasses set ``self.logic`` and
    ``self.ui`` (with a ``roiSelector``) in ``setupPanel`` and implement
    ``updateGUIFromParameterNode`` and ``onPollRun``.

    The ROI selector is bound here rather than by ``connectGui``: the parameter node's ``roi``
    is annotated with an abstract core class (see ``ASDSegParameterNode``), and ``connectGui``
    would set the selector's node types from it (instantiating it, which fails).
    """

    #: The module's Qt-free libraries, read again from disk on Reload.
    libraries: tuple[str, ...] = ()

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onPollRun)

    def setup(self) -> None:
        """The panel, or on a Slicer older than :data:`MINIMUM_SLICER` a line saying what is needed."""
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicer_version_problem()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        self.setupPanel()
        self.ui.roiSelector.currentNodeChanged.connect(self.onRoiSelected)
        self.observeScene()
        self.initializeParameterNode()

    def setupPanel(self) -> None:
        raise NotImplementedError

    def onReload(self) -> None:
        for package in self.libraries:
            forget_library(package)
        super().onReload()

    def observeScene(self) -> None:
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is None:
            return  # too old a Slicer: the panel only says what is needed
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first_volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first_volume:
                self._parameterNode.inputVolume = first_volume

    def setParameterNode(self, parameter_node) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._parameterNode = parameter_node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.ui.roiSelector.setCurrentNode(self._parameterNode.roi)
        self.updateGUIFromParameterNode()

    def onRoiSelected(self, node) -> None:
        if self._parameterNode is not None:
            self._parameterNode.roi = node

    def startPolling(self, run, message: str) -> None:
        self._run = run
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self.ui.statusLabel.text = message
        self._timer.start()
        self.updateGUIFromParameterNode()

    def stopPolling(self):
        """Stop polling and return the run, which has ended (or was cancelled)."""
        run, self._run = self._run, None
        self._timer.stop()
        self.ui.progressBar.hide()
        return run

    def cancelRun(self) -> None:
        """Kill the running engine, if any, without waiting for it (scene close, reload, exit)."""
        if self._run is not None:
            self.stopPolling().close()


class ASDSegWidget(ParameterNodeWidget):
    libraries = ("ASDSegLib",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._deviceQuery = None
        self._deviceTimer = qt.QTimer()
        self._deviceTimer.setInterval(POLL_INTERVAL_MS)
        self._deviceTimer.timeout.connect(self.onPollDeviceQuery)

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
                self.refreshEngineState()

    def cleanup(self) -> None:
        super().cleanup()
        if self._deviceQuery is not None:
            self._deviceTimer.stop()
            self._deviceQuery.cancel()
            self._deviceQuery = None

    # Engine and models ---------------------------------------------------------------------

    def refreshEngineState(self) -> None:
        """Show what is missing, or list the models from their cards (torch is not imported
        into Slicer for that) and ask a child process which devices torch sees."""
        missing = missing_dependencies()
        self.ui.installDependenciesButton.setVisible(bool(missing))
        if missing:
            self.ui.statusLabel.text = f"Needs {', '.join(missing)}: click 'Install dependencies'."
            self.updateGUIFromParameterNode()
            return
        from asdseg.registry import available_models

        self.queryDevices()
        cards = available_models()
        was_blocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for name in sorted(cards):
            self.ui.modelSelector.addItem(name)
        self.ui.modelSelector.blockSignals(was_blocked)
        if not cards:
            self.ui.statusLabel.text = "No model is installed; see 'Where models live' in the README."
        saved = self._parameterNode.modelName if self._parameterNode else ""
        index = self.ui.modelSelector.findText(saved)
        self.ui.modelSelector.setCurrentIndex(index if index >= 0 else 0)
        self.onModelChanged()

    def queryDevices(self) -> None:
        """Once per session: torch's view of the GPUs, asked in a PythonSlicer child so that a
        slow or broken CUDA driver cannot freeze or break Slicer."""
        if self._deviceQuery is not None or self.ui.deviceInfoLabel.text:
            return
        from asdseg.background import BackgroundJob

        self.ui.deviceInfoLabel.text = "Asking torch which devices it can use..."
        self._deviceQuery = BackgroundJob(["devices"], python_slicer(), engine_environment(), progress=False)
        self._deviceTimer.start()

    def onPollDeviceQuery(self) -> None:
        from asdseg.background import JobState

        if self._deviceQuery.state() is JobState.RUNNING:
            return
        self._deviceTimer.stop()
        query, self._deviceQuery = self._deviceQuery, None
        if query.wait() is JobState.SUCCEEDED and query.output:
            self.ui.deviceInfoLabel.text = query.output[-1]
        else:
            logging.warning("ASDSeg: could not query the devices: %s", query.error)
            self.ui.deviceInfoLabel.text = "could not query the GPUs (see the log); the CPU will be used"

    def onInstallDependencies(self) -> None:
        with user_action("Installing the dependencies"):
            if install_dependencies():
                self.refreshEngineState()

    def onModelChanged(self, _index=None) -> None:
        name = self.ui.modelSelector.currentText
        if self._parameterNode and name:
            self._parameterNode.modelName = name
        self.ui.modelSummaryLabel.text = self.logic.modelSummary(name) if name else ""
        self.updateGUIFromParameterNode()

    # Running -------------------------------------------------------------------------------

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self._run is not None
        ready = bool(parameters and parameters.inputVolume and parameters.modelName)
        teaching = type(self._run).__name__ == "TeachRun"
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
        if self._run is not None:
            self.ui.statusLabel.text = "Cancelling..."
            self._run.cancel()
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

    def onPollRun(self) -> None:
        from asdseg.background import JobState
        from asdseg.errors import AsdsegError, CancelledError

        run = self._run
        teaching = type(run).__name__ == "TeachRun"
        if run.state() is JobState.RUNNING:
            progress = run.progress
            self.ui.progressBar.setValue(round(100 * progress.fraction))
            if progress.total:
                unit = "step" if teaching else "window"
                self.ui.statusLabel.text = (
                    f"{progress.stage.capitalize()}: {unit} {progress.done} of {progress.total}"
                )
            return
        self.stopPolling()
        if teaching:
            self.finishTeach(run)
            return
        parameters = self._parameterNode
        try:
            target = parameters.outputSegmentation
            if target is not None and self.logic.segmentation.source_volume(target) is not run.volume_node:
                target = None  # made for another volume: find or create this volume's own
            outputs = self.logic.segmentation.finish(run, target, parameters.newSegmentation)
        except CancelledError:
            self.ui.statusLabel.text = "Cancelled; the scene was not changed."
        except Exception as error:
            if not isinstance(error, AsdsegError):
                logging.exception("ASDSeg: reading the engine's results failed")
            self.ui.statusLabel.text = "Failed; the scene was not changed."
            slicer.util.errorDisplay(f"Segmentation failed: {error}")
        else:
            parameters.outputSegmentation = outputs.segmentation_node
            self.showOverlay()
            self.ui.statusLabel.text = "Done." + "".join(
                f"\nWarning: {warning}" for warning in outputs.warnings
            )
        finally:
            self.updateGUIFromParameterNode()

    # Teaching -----------------------------------------------------------------------------

    def onMarkChecked(self) -> None:
        from ASDSegLib.volume_nodes import slice_under_view

        parameters = self._parameterNode
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        index = slice_under_view(parameters.inputVolume, red)
        if index is None:
            slicer.util.errorDisplay("The red view is not on one of the volume's axial slices.")
            return
        with user_action(f"Marking slice {index} as right"):
            checked = self.logic.teach.mark_checked(parameters.outputSegmentation, [index])
            self.ui.statusLabel.text = f"Slice {index} counts as checked ({len(checked)} checked)."

    def onTeachOrCancel(self) -> None:
        if self._run is not None:
            self.ui.statusLabel.text = "Stopping..."
            self._run.cancel()
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
        from asdseg.errors import AsdsegError, CancelledError

        try:
            outcome = self.logic.teach.finish_teach(run)
        except CancelledError as error:
            self.ui.statusLabel.text = str(error).capitalize()
        except Exception as error:
            if not isinstance(error, AsdsegError):
                logging.exception("ASDSeg: teaching failed")
            self.ui.statusLabel.text = "Teaching failed; the models are unchanged."
            slicer.util.errorDisplay(f"Teaching failed: {error}")
        else:
            self.ui.statusLabel.text = outcome.message()
            if outcome.installed is not None:
                self._parameterNode.modelName = outcome.installed.name
                self.refreshEngineState()  # the new version is picked; the original stays listed
            else:
                slicer.util.warningDisplay(outcome.message())
        finally:
            self.updateGUIFromParameterNode()

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
        segmentation_node = self._parameterNode.outputSegmentation
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(),
            "Export segmentation to NIfTI",
            suggested_export_path(segmentation_node),
            "NIfTI (*.nii.gz *.nii)",
        )
        if not path:
            return
        with user_action("Export (nothing was written)"):
            written = self.logic.segmentation.export_segmentation(segmentation_node, path)
            self.ui.statusLabel.text = "Wrote " + ", ".join(item.name for item in written)


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
            from ASDSegLib.segmentation_logic import SegmentationLogic

            self._segmentation = SegmentationLogic(
                slicer.mrmlScene, python_slicer(), engine_environment(), slicer.app.temporaryPath
            )
        return self._segmentation

    @property
    def teach(self):
        if self._teach is None:
            from ASDSegLib.teach_logic import TeachLogic

            self._teach = TeachLogic(
                slicer.mrmlScene, python_slicer(), engine_environment(), slicer.app.temporaryPath
            )
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
