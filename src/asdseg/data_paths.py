"""Where the LA 2018 data lives: the one lookup the demo, the benchmarks, the tools and the tests
share."""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that points at the LA 2018 folder (the one holding ``train.list``).
LA2018_ENVIRONMENT = "ASDSEG_LA2018"
LA2018_MISSING = "LA 2018 data not found at ../shared/data/la2018 (or $ASDSEG_LA2018)."


def shared_la2018() -> Path:
    """Where the LA 2018 folder is looked for beside the repository: ``../shared/data/la2018``."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "la2018"


def find_la2018() -> Path | None:
    """The LA 2018 folder: ``$ASDSEG_LA2018``, else :func:`shared_la2018`; None when neither
    holds a ``train.list``."""
    candidates = [os.environ.get(LA2018_ENVIRONMENT), str(shared_la2018())]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train.list").is_file():
            return Path(candidate)
    return None


def require_la2018() -> Path:
    """For the scripts that need the data (benchmarks, tools): its folder, or exit saying where
    it was looked for."""
    root = find_la2018()
    if root is None:
        raise SystemExit(LA2018_MISSING)
    return root
