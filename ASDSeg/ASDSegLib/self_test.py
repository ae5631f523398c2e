"""What the Slicer self-tests need besides the logic: a model folder of their own, and the
phantom model trained there in a child process.

A self-test (Reload and Test, or ctest) must leave the user's models as they were, and training
inside Slicer's process would block it for a minute and load torch into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asdseg.errors import AsdsegError
from asdseg.registry.model_card import ModelCard

HOME_VARIABLE = "ASDSEG_HOME"


@contextmanager
def isolated_model_home(
    parent: str | Path | None, environment: dict[str, str]
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A new temporary folder in ``parent`` holding an empty model home, and the children's
    environment (``environment`` pointed at that home). Within the block this process (model
    list, model cards) uses that home too; afterwards the folder is deleted and the previous
    ``ASDSEG_HOME`` is back."""
    previous = os.environ.get(HOME_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="asdseg-self-test-", dir=parent) as folder:
        home = str(Path(folder) / "asdseg-home")
        os.environ[HOME_VARIABLE] = home
        try:
            yield Path(folder), {**environment, HOME_VARIABLE: home}
        finally:
            if previous is None:
                del os.environ[HOME_VARIABLE]
            else:
                os.environ[HOME_VARIABLE] = previous


def install_demo_model(python_executable: str | None, environment: dict[str, str]) -> ModelCard:
    """Train and install the phantom model in a child process (``python_executable``, default
    this Python) into the model home ``environment`` names; returns its card."""
    command = [python_executable or sys.executable, "-m", "asdseg.demo.phantom_model"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, encoding="utf-8")
    if result.returncode != 0 or not result.stdout.strip():
        raise AsdsegError(f"training the phantom model failed:\n{result.stderr.strip()[-2000:]}")
    return ModelCard.load(Path(result.stdout.strip().splitlines()[-1]) / "card.json")
