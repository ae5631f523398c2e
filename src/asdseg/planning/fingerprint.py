"""A dataset's fingerprint, as nnU-Net v2's experiment planning reads one: per case the shape,
spacing and direction; intensity statistics of the foreground voxels; label volumes per organ;
the modality from dataset.json. Planning (:mod:`asdseg.planning.experiment_plan`) decides
spacing, patch, batch and normalisation from it.

Reading every case takes a while on a large set, so the fingerprint is cached as JSON beside the
run (``fingerprint.json``) with a signature of the files it was read from (paths, sizes,
modification times): a changed, added or removed file makes it be read again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from asdseg.errors import InputError
from asdseg.io.datasets import case_names, case_paths, is_dataset_folder, read_dataset
from asdseg.io.image_io import read_image
from asdseg.io.json_files import write_json
from asdseg.progress import ProgressCallback

FINGERPRINT_FILE = "fingerprint.json"
#: Foreground voxels sampled per case for the intensity statistics (nnU-Net samples 10,000).
SAMPLED_VOXELS = 10_000
#: The LA 2018 layout has no dataset.json; its images are MRI.
LA_LAYOUT_MODALITY = "MRI"


@dataclass(frozen=True)
class CaseFingerprint:
    name: str
    shape: tuple[int, int, int]  #: voxels, (x, y, z)
    spacing: tuple[float, float, float]  #: mm
    direction: tuple[float, ...]
    labelled: bool
    #: Millilitres of each label value present (keyed by the value as text, as JSON keeps it).
    organ_ml: dict[str, float]


@dataclass(frozen=True)
class DatasetFingerprint:
    root: str
    #: The image channel's name from dataset.json ("MRI", "T2", "CT"...).
    modality: str
    cases: tuple[CaseFingerprint, ...]
    #: Of foreground voxels sampled over the labelled cases: mean, std, median, min, max and the
    #: 0.5th and 99.5th percentiles (nnU-Net's CT clipping bounds).
    foreground_intensity: dict[str, float]
    #: What it was read from (:func:`files_signature`).
    signature: str

    @property
    def is_ct(self) -> bool:
        return self.modality.strip().lower() == "ct"

    @property
    def labelled(self) -> list[CaseFingerprint]:
        return [case for case in self.cases if case.labelled]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_files(root: Path) -> list[tuple[str, Path, Path | None]]:
    """Every case of a dataset folder or of the LA 2018 layout: name, image, label (None for an
    image without one)."""
    names = read_dataset(root).names if is_dataset_folder(root) else case_names(root)
    return [(name, *case_paths(root, name)) for name in names]


def files_signature(files: list[tuple[str, Path, Path | None]]) -> str:
    """A digest of each file's path, size and modification time."""
    lines = [
        f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        for _, *paths in files
        for path in paths
        if path is not None
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _case_fingerprint(
    name: str, image_path: Path, label_path: Path | None, rng: np.random.Generator
) -> tuple[CaseFingerprint, np.ndarray]:
    """The case's fingerprint and a sample of its foreground intensities (none when unlabelled)."""
    image = read_image(image_path)
    spacing = tuple(float(value) for value in image.GetSpacing())
    organ_ml: dict[str, float] = {}
    sample = np.empty(0, dtype=np.float32)
    if label_path is not None:
        label = sitk.GetArrayFromImage(read_image(label_path))
        if label.shape != sitk.GetArrayViewFromImage(image).shape:
            raise InputError(
                f"case {name}: its label ({label_path}) is not on its image's grid; export both "
                "from the same volume."
            )
        values, counts = np.unique(label, return_counts=True)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        organ_ml = {
            str(int(value)): round(float(count) * voxel_ml, 3)
            for value, count in zip(values, counts)
            if value
        }
        foreground = sitk.GetArrayViewFromImage(image)[label > 0]
        if foreground.size:
            sample = rng.choice(foreground, size=min(SAMPLED_VOXELS, foreground.size), replace=False)
    case = CaseFingerprint(
        name=name,
        shape=tuple(int(size) for size in image.GetSize()),
        spacing=spacing,
        direction=tuple(round(float(value), 6) for value in image.GetDirection()),
        labelled=label_path is not None,
        organ_ml=organ_ml,
    )
    return case, sample.astype(np.float64)


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {}
    statistics = {
        "mean": samples.mean(),
        "std": samples.std(),
        "median": np.median(samples),
        "min": samples.min(),
        "max": samples.max(),
        "percentile_00_5": np.percentile(samples, 0.5),
        "percentile_99_5": np.percentile(samples, 99.5),
    }
    return {key: round(float(value), 6) for key, value in statistics.items()}


def dataset_modality(root: Path) -> str:
    return read_dataset(root).channel if is_dataset_folder(root) else LA_LAYOUT_MODALITY


def compute_fingerprint(root: str | Path, progress: ProgressCallback | None = None) -> DatasetFingerprint:
    """Read every case of ``root`` (a dataset folder or the LA 2018 layout) once."""
    root = Path(root)
    files = dataset_files(root)
    rng = np.random.default_rng(1234)
    cases, samples = [], []
    for index, (name, image_path, label_path) in enumerate(files):
        case, sample = _case_fingerprint(name, image_path, label_path, rng)
        cases.append(case)
        samples.append(sample)
        if progress is not None:
            progress(index + 1, len(files), "fingerprint")
    return DatasetFingerprint(
        root=str(root.resolve()),
        modality=dataset_modality(root),
        cases=tuple(cases),
        foreground_intensity=intensity_statistics(np.concatenate(samples)),
        signature=files_signature(files),
    )


def fingerprint_from_dict(values: dict[str, Any]) -> DatasetFingerprint:
    cases = tuple(
        CaseFingerprint(
            **{
                **case,
                "shape": tuple(case["shape"]),
                "spacing": tuple(case["spacing"]),
                "direction": tuple(case["direction"]),
            }
        )
        for case in values["cases"]
    )
    return DatasetFingerprint(**{**values, "cases": cases})


def cached_fingerprint(
    root: str | Path, folder: str | Path, progress: ProgressCallback | None = None
) -> DatasetFingerprint:
    """The fingerprint of ``root``: ``folder``'s fingerprint.json where it was read from the
    same files, else read anew (:func:`write_fingerprint` keeps it)."""
    root, path = Path(root), Path(folder) / FINGERPRINT_FILE
    if path.is_file():
        try:
            cached = fingerprint_from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError):
            cached = None  # an older or damaged cache: read the data again
        if cached is not None and cached.signature == files_signature(dataset_files(root)):
            return cached
    return compute_fingerprint(root, progress)


def write_fingerprint(folder: str | Path, fingerprint: DatasetFingerprint) -> Path:
    path = Path(folder) / FINGERPRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, fingerprint.to_dict(), indent=1)
    return path
