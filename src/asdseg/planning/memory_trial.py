"""A short measured trial of a training step: peak memory and step time of a recipe's networks
at a patch and batch size, on this machine.

The trial runs in a process of its own (``python -m asdseg.planning.memory_trial SETTINGS``)
so that its peak resident memory is its own: the same torch, recipe, networks, optimizer and
autocast as ``asdseg train``, running two steps on synthetic cases of the patch's size. The
second step is the run's last, so it pays what a run's end adds to a step: validation, the
checkpoint, ``curves.png`` and the model (a tiny configuration's peak is mostly these). It
reports the process's memory before the first step (Python, torch, the networks and their
optimizer state), its peak over the run (on a GPU, torch's peak allocation instead) and the
second step's own time (the first pays one-off allocations).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asdseg.errors import InputError

#: Synthetic cases the trial trains on (labelled and unlabelled), and validates on.
TRIAL_CASES = 2
VALIDATION_CASES = 1
TRIAL_STEPS = 2


@dataclass(frozen=True)
class TrialSettings:
    recipe: str
    network: dict[str, Any]
    patch_size: tuple[int, int, int]
    batch_size: int
    labelled_per_batch: int
    precision: str
    device: str


@dataclass(frozen=True)
class TrialResult:
    settings: TrialSettings
    #: MB resident before the first step (CPU) or allocated by torch on the GPU.
    before_mb: float
    #: MB at the peak of the steps: the process's peak resident memory on a CPU, torch's peak
    #: allocation on a GPU.
    peak_mb: float
    step_s: float
    #: MB of the synthetic cases the trial held (to swap for the real data's).
    trial_data_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resident_mb() -> float:
    """Resident memory now (Linux); elsewhere the peak so far, which is what it is before the
    first step."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return _peak_resident_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_resident_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_trial(settings: TrialSettings) -> dict[str, float]:
    """Two training steps in this process (see the module's docstring)."""
    import torch

    from asdseg.training.config import DataConfig, TrainingConfig
    from asdseg.training.trainer import Trainer

    classes = settings.network["params"]["num_classes"]
    labels = [
        {"value": value, "name": f"class {value}", "color": [value, value, value]} for value in range(classes)
    ]
    config = TrainingConfig(
        recipe=settings.recipe,
        network=settings.network,
        labels=labels,
        patch_size=tuple(settings.patch_size),
        batch_size=settings.batch_size,
        labelled_per_batch=settings.labelled_per_batch,
        steps=TRIAL_STEPS,
        validate_every=TRIAL_STEPS,
        checkpoint_every=TRIAL_STEPS,
        precision=settings.precision,
        data=DataConfig(
            labelled=TRIAL_CASES,
            validation=VALIDATION_CASES,
            cases=2 * TRIAL_CASES + VALIDATION_CASES,
            phantom_shape=tuple(settings.patch_size),
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, folder, device=settings.device)
        on_gpu = trainer.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20 if on_gpu else _resident_mb()
        history = trainer.run(show_progress=False).history
        peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else _peak_resident_mb()
    voxels = settings.patch_size[0] * settings.patch_size[1] * settings.patch_size[2]
    return {
        "before_mb": before,
        "peak_mb": peak,
        "step_s": history[-1]["step_seconds"],
        "trial_data_mb": 0.0 if on_gpu else (2 * TRIAL_CASES + VALIDATION_CASES) * voxels * 6 / 2**20,
    }


def measure(settings: TrialSettings) -> TrialResult:
    """Run the trial in a process of its own and read its figures."""
    command = [sys.executable, "-m", "asdseg.planning.memory_trial", json.dumps(asdict(settings))]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        reason = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(
            f"the memory trial of {settings.recipe} at patch {list(settings.patch_size)}, batch "
            f"{settings.batch_size} failed ({reason}); lower --memory-gb or check the device."
        )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return TrialResult(settings=settings, **figures)


def main(arguments: list[str]) -> int:
    values = json.loads(arguments[0])
    settings = TrialSettings(**{**values, "patch_size": tuple(values["patch_size"])})
    print(json.dumps(run_trial(settings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
