"""The engine's Python dependencies in Slicer, for both modules: what is missing (read from
package metadata by :mod:`dependencies`, nothing imported) and, once the user confirms, their
installation: torch through the PyTorch extension, the rest with pip, never replacing torch or
Slicer's own packages. The self-tests skip (rather than fail) where they are missing.

Widget side: asks and reports in Slicer's message boxes, so only the module files import it.
"""

from __future__ import annotations

import subprocess
import tempfile
import unittest
from pathlib import Path

import slicer

#: The pip requirements of the engine (Slicer's Python has numpy and SimpleITK; torch comes
#: from the PyTorch extension). Installed beside the module files, as in the source tree.
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


def missing_dependencies() -> list[str]:
    """Packages the engine needs that this Slicer's Python lacks or has in too old a version."""
    from .dependencies import missing_requirements

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
    from .dependencies import TORCH_REQUIREMENT

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
    from .dependencies import protected_constraints

    with tempfile.TemporaryDirectory(prefix="asdseg-", dir=slicer.app.temporaryPath) as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("\n".join(protected_constraints()) + "\n", encoding="utf-8")
        with slicer.util.displayPythonShell():
            slicer.util.pip_install(["-r", str(REQUIREMENTS_FILE), "-c", str(constraints)])


# Self-tests ---------------------------------------------------------------------------------


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
