"""Result files that keep one run per setting and CPU: a new run replaces the run with its key and
the others stay, so that figures from CPUs that differ most (AVX2 only, AVX512-BF16, AMX) sit
side by side in one tracked file, each with its machine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asdseg.io.json_files import write_json

Run = dict[str, Any]


def cpu_key(run: Run) -> tuple[str, ...]:
    """A run's CPU, as far as the kernels torch picks are concerned: its kernel flags."""
    return tuple(run["machine"]["cpu_kernel_flags"])


def write_run(path: Path, result: Run, key: Callable[[Run], tuple] = cpu_key) -> None:
    """Write ``{"runs": [...]}`` to ``path``: the runs it holds whose ``key`` differs from
    ``result``'s (a file from before runs were kept is one run), then ``result``."""
    runs: list[Run] = []
    if path.is_file():
        data = json.loads(path.read_text())
        runs = [run for run in data.get("runs", [data]) if key(run) != key(result)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"runs": [*runs, result]})
