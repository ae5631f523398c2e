"""The Qt glue both module panels share, ASDSeg's and ActiveAnnotate's: Slicer's scripted-module
widget plumbing (the parameter node bound to the .ui and following the scene), the dependency
check and install button, one engine run at a time polled with its outcome on the status line,
the export dialog, and the message box that says which user action failed.

Widget side (Qt): only the module files import it. Each module's widget keeps what is its own:
its buttons, what a run's progress and results look like there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .engine_runs import RunPoller, end_session_engine
from .installer import install_dependencies, missing_dependencies

#: The oldest Slicer these modules run in (Python 3.9); 5.10 and newer run Python 3.12.
MINIMUM_SLICER = (5, 8)


def slicer_version_problem() -> str | None:
    """What to do when this Slicer is older than :data:`MINIMUM_SLICER`, else None."""
    running = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if running >= MINIMUM_SLICER:
        return None
    return (
        f"SlicerASDSeg needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer; this is "
        f"{slicer.app.applicationVersion}. Install the current Slicer from https://download.slicer.org."
    )


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


class ParameterNodeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The plumbing of Slicer's scripted-module template that this extension's panels share:
    the parameter node is bound to the .ui widgets and follows the scene (closed, re-opened),
    and one engine run at a time is polled by a timer. Subclasses set ``self.logic`` and
    ``self.ui`` (with a ``roiSelector``, ``progressBar``, ``statusLabel``, ``modelSelector``
    and ``installDependenciesButton``) in ``setupPanel`` and implement
    ``updateGUIFromParameterNode``, ``refreshModels``, ``onModelChanged`` and ``finishRun``
    (and ``progressText`` for a status line while a run runs).

    The ROI selector is bound here rather than by ``connectGui``: the parameter node's ``roi``
    is annotated with an abstract core class (see ``ASDSegParameterNode``), and ``connectGui``
    would set the selector's node types from it (instantiating it, which fails).
    """

    #: The module's libraries (its *Lib packages), read again from disk on Reload.
    libraries: tuple[str, ...] = ()

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runs = RunPoller(self.showRunProgress, self.onRunEnded)

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
        end_session_engine()
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
        end_session_engine()  # its loaded models go with the scene; the next job starts it again
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

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        raise NotImplementedError

    def onRoiSelected(self, node) -> None:
        if self._parameterNode is not None:
            self._parameterNode.roi = node

    # Dependencies ------------------------------------------------------------------------------

    def showMissingDependencies(self) -> bool:
        """Show the install button and, on the status line, what the engine lacks; True when it
        lacks something."""
        missing = missing_dependencies()
        self.ui.installDependenciesButton.setVisible(bool(missing))
        if missing:
            self.ui.statusLabel.text = f"Needs {', '.join(missing)}: click 'Install dependencies'."
        return bool(missing)

    def onInstallDependencies(self) -> None:
        with user_action("Installing the dependencies"):
            if install_dependencies():
                self.refreshModels()

    def refreshModels(self) -> None:
        """The model list, once the dependencies are there."""
        raise NotImplementedError

    def listModels(self, names: list[str], saved: str) -> None:
        """Fill the model selector with ``names`` (a model given by its folder shows as the
        folder's name) and select ``saved``, else the first; then ``onModelChanged``."""
        selector = self.ui.modelSelector
        was_blocked = selector.blockSignals(True)
        selector.clear()
        for name in names:
            selector.addItem(Path(name).parent.name if "/" in name or "\\" in name else name, name)
        selector.blockSignals(was_blocked)
        index = selector.findData(saved)
        selector.setCurrentIndex(index if index >= 0 else 0)
        self.onModelChanged()

    # Engine runs -------------------------------------------------------------------------------

    @property
    def currentRun(self):
        """The engine run being polled, or None."""
        return self._runs.job

    def startPolling(self, run, message: str) -> None:
        self._runs.start(run)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self.ui.statusLabel.text = message
        self.updateGUIFromParameterNode()

    def stopPolling(self):
        """Stop polling and return the run, which has ended (or was cancelled)."""
        run = self._runs.stop()
        self.ui.progressBar.hide()
        return run

    def cancelRunning(self, message: str | None = None) -> bool:
        """Ask the running engine, if any, to stop (its end is polled as any other) and say
        ``message`` on the status line; False when nothing runs."""
        if self.currentRun is None:
            return False
        if message is not None:
            self.ui.statusLabel.text = message
        self.currentRun.cancel()
        return True

    def cancelRun(self) -> None:
        """Kill the running engine, if any, without waiting for it (scene close, reload, exit)."""
        if self.currentRun is not None:
            self.stopPolling().close()

    def showRunProgress(self, run) -> None:
        progress = run.progress
        self.ui.progressBar.setValue(round(100 * progress.fraction))
        text = self.progressText(run, progress)
        if text:
            self.ui.statusLabel.text = text

    def progressText(self, run, progress) -> str | None:
        """The status line while ``run`` runs (the engine's stage and how far it is), or None to
        leave it as it is."""
        return progress.status_line()

    def onRunEnded(self, run) -> None:
        self.ui.progressBar.hide()
        try:
            self.finishRun(run)
        finally:
            self.updateGUIFromParameterNode()

    def finishRun(self, run) -> None:
        """Put an ended run's results into the scene, or say why there are none (readResults)."""
        raise NotImplementedError

    def readResults(
        self,
        read: Callable[[], object],
        what: str,
        failed: str,
        cancelled: str | None = None,
        log: str = "reading the engine's results failed",
    ):
        """``read()``: an ended run's results (never None), or None once the status line says
        why there are none: ``cancelled`` (default: the CancelledError's own message) for a
        cancelled run; for a failed one ``failed``, and "<what> failed: <error>" in a message
        box, logged with its traceback unless it is the engine's own error."""
        from asdseg.errors import AsdsegError, CancelledError

        try:
            return read()
        except CancelledError as error:
            message = str(error)  # its first letter up, the rest as written (not str.capitalize)
            self.ui.statusLabel.text = cancelled or message[:1].upper() + message[1:]
        except Exception as error:
            if not isinstance(error, AsdsegError):
                logging.exception("%s: %s", self.moduleName, log)
            self.ui.statusLabel.text = failed
            slicer.util.errorDisplay(f"{what} failed: {error}")
        return None

    # Slices and export -------------------------------------------------------------------------

    @staticmethod
    def sliceInRedView(volume_node, problem: str) -> int | None:
        """The volume's slice (k) the red view shows, or None once ``problem`` is shown."""
        from .volume_nodes import slice_under_view

        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        index = slice_under_view(volume_node, red)
        if index is None:
            slicer.util.errorDisplay(problem)
        return index

    def exportToFile(self, node, title: str, write: Callable[[object, str], list[Path]]) -> None:
        """Ask where (NIfTI), then ``write(node, path)``; the status line lists the files written."""
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), title, suggested_export_path(node), "NIfTI (*.nii.gz *.nii)"
        )
        if not path:
            return
        with user_action("Export (nothing was written)"):
            written = write(node, path)
            self.ui.statusLabel.text = "Wrote " + ", ".join(item.name for item in written)
