"""What the commands print besides their results: warnings on stderr and the progress of a long run
(a terminal bar, or JSON lines on stdout for a parent process)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from asdseg.progress import ProgressCallback


def warn(message: str) -> None:
    """One warning line on stderr, printed at once rather than after a long run."""
    print(f"warning: {message}", file=sys.stderr)


def warn_about_precision(device: torch.device, precision: str) -> None:
    """Warn about a precision ``device`` only emulates (fp16 or bf16 on most CPUs)."""
    from asdseg.devices import precision_warning

    warning = precision_warning(device, precision)
    if warning:
        warn(warning)


def progress_reporter(
    kind: str, label: str, unit: str = "win"
) -> tuple[ProgressCallback, Callable[[], None]]:
    """``--progress``'s reporter and what closes it: JSON lines (``json``) or a bar named ``label``
    counting ``unit``."""
    from asdseg.progress import json_progress, tqdm_progress

    if kind == "json":
        return json_progress(), lambda: None
    return tqdm_progress(label, unit=unit)
