"""The ASDSeg module's library: MRML <-> engine conversions and the segmentation logic, and the
Slicer glue both modules' panels share.

The logic imports no Qt, so tests drive it against the real Slicer core libraries
(``slicer-core``) and the modules' widgets stay thin glue. Only the widget side needs Slicer's
Qt: ``panel`` (the base of both widgets), ``engine_runs`` (PythonSlicer and polling a run) and
``installer`` (installing the dependencies); only the module files import them.

Importing this package makes the ``asdseg`` engine importable, so that every module of it (and
ASDSeg.py and ActiveAnnotate.py, which import it first) can import the engine, also when Slicer
opens the modules from a source checkout where nothing is installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: Where a source checkout keeps the engine: ``src/`` beside the module folders.
SOURCE_TREE_ENGINE = Path(__file__).resolve().parents[2] / "src"


def make_engine_importable() -> None:
    """An installed extension has the engine beside the modules, on Slicer's ``sys.path``
    already; a source checkout added through "Additional module paths" has it in ``../src``."""
    if importlib.util.find_spec("asdseg") is None and (SOURCE_TREE_ENGINE / "asdseg").is_dir():
        sys.path.insert(0, str(SOURCE_TREE_ENGINE))


make_engine_importable()
