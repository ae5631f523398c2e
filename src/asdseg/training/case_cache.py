"""Training cases packed into numpy archives, for a machine that has numpy and torch but not the
image readers (a lent GPU machine), and in parts small enough for one transfer each.

Each part is a compressed ``.npz`` holding every case's voxels as stored (``<case>/image``, and
``<case>/label`` for labelled cases) in (x, y, z) order; ``index.json`` says which case is in
which part, its role in the split, its spacing and the intensity normalisation. Loading applies
the same normalisation as :func:`asdseg.training.data.load_case`, so a run on the cache sees the
arrays a run on the NIfTI files sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asdseg.errors import InputError
from asdseg.io.atomic_write import atomic_path
from asdseg.io.json_files import read_json, write_json
from asdseg.training.config import DataConfig
from asdseg.training.data import LABEL_DTYPE, Case, CaseSplit, split_names

INDEX_FILE = "index.json"
#: Roles written into the cache; validation cases stay behind (evaluation runs where the data is).
CACHED_ROLES = ("labelled", "unlabelled")


def _stored_arrays(root: Path, name: str, labelled: bool) -> dict[str, np.ndarray]:
    """The case's voxels in their stored type, (x, y, z) order, and its spacing."""
    import SimpleITK as sitk  # only where the cache is written

    from asdseg.io.image_io import read_image

    folder = root / "train" / name
    image = read_image(folder / "image.nii.gz")
    arrays = {
        "image": sitk.GetArrayFromImage(image).transpose(2, 1, 0).copy(),
        "spacing": np.asarray(image.GetSpacing(), dtype=np.float64),
    }
    if labelled:
        label = read_image(folder / "label.nii.gz")
        arrays["label"] = sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.uint8)
    return arrays


def _parts_by_size(root: Path, names: list[str], part_bytes: int) -> list[list[str]]:
    """Consecutive groups of cases whose compressed files add up to at most ``part_bytes``."""
    parts: list[list[str]] = [[]]
    size = 0
    for name in names:
        case_bytes = sum(path.stat().st_size for path in (root / "train" / name).glob("*.nii.gz"))
        if parts[-1] and size + case_bytes > part_bytes:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += case_bytes
    return parts


def write_case_cache(data: DataConfig, output: str | Path, part_bytes: int = 45 * 2**20) -> list[Path]:
    """Pack the labelled and unlabelled cases of ``data``'s split into ``output``; returns the
    files written (the parts, then the index)."""
    if data.root is None or data.downsample != 1:
        raise InputError(
            "the case cache packs LA-layout data at its own resolution (root set, downsample 1)."
        )
    root, output = Path(data.root), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = split_names(data)
    roles = {name: role for role in CACHED_ROLES for name in names[role]}
    index: dict[str, Any] = {"normalization": data.normalization, "intensity": data.intensity, "cases": {}}
    written = []
    for number, part in enumerate(_parts_by_size(root, list(roles), part_bytes), start=1):
        file_name = f"part{number:02d}.npz"
        arrays = {}
        for name in part:
            stored = _stored_arrays(root, name, roles[name] == "labelled")
            index["cases"][name] = {
                "role": roles[name],
                "part": file_name,
                "spacing": stored.pop("spacing").tolist(),
            }
            arrays.update({f"{name}/{key}": value for key, value in stored.items()})
        with atomic_path(output / file_name) as temporary, open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        written.append(output / file_name)
    write_json(output / INDEX_FILE, index, indent=1)
    return [*written, output / INDEX_FILE]


def load_cached_split(folder: str | Path, missing_parts_ok: bool = False) -> CaseSplit:
    """The labelled and unlabelled cases of a cache (no validation cases), normalised; with
    ``missing_parts_ok`` the cases of parts not (yet) copied are left out instead of refused."""
    from asdseg.preprocessing.transforms import normalize_intensity

    folder = Path(folder)
    index = read_json(folder / INDEX_FILE, "case_cache", "case cache index")
    archives: dict[str, Any] = {}
    split = CaseSplit(labelled=[], unlabelled=[], validation=[])
    for name, entry in index["cases"].items():
        part = entry["part"]
        if part not in archives:
            if not (folder / part).is_file():
                if missing_parts_ok:
                    continue
                raise InputError(f"{folder}: part {part} of the case cache is missing; copy every part.")
            archives[part] = np.load(folder / part)
        archive = archives[part]
        image = normalize_intensity(archive[f"{name}/image"], index["normalization"], index.get("intensity"))
        label = archive[f"{name}/label"].astype(LABEL_DTYPE) if entry["role"] == "labelled" else None
        getattr(split, entry["role"]).append(Case(name, image, label, tuple(entry["spacing"])))
    return split
