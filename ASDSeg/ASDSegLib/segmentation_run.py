"""One segmentation by the engine: the volume written to a temporary folder, ``asdseg segment``
in a child process or the session's warm engine (:class:`asdseg.background.FolderJob`), and its
outputs read back and checked to lie on the volume's voxel grid. Nothing here touches the scene
(see segmentation_logic).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import slicer

from asdseg.background import FolderJob
from asdseg.errors import AsdsegError, InputError
from asdseg.io.image_io import read_image, same_geometry
from asdseg.io.image_io import write_image as write_image_file
from asdseg.io.labels import sdm_output_paths
from asdseg.preprocessing.roi import RegionOfInterest
from asdseg.registry.model_card import ModelCard
from asdseg.warm_engine import WarmEngine

from .volume_nodes import image_from_volume_node

_DEVICES = ("auto", "cpu", "cuda", "mps")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RunOptions:
    """What the user chose in the module panel; ``overlap=None`` means "as the model card says"."""

    device: str = "auto"
    precision: str = "auto"
    overlap: float | None = None
    largest_component: bool = True
    #: Test-time mirroring as the model card asks (False: one pass, faster).
    mirroring: bool = True

    def check(self) -> None:
        if self.device not in _DEVICES:
            raise InputError(f"unknown device {self.device!r}; choose one of {', '.join(_DEVICES)}.")
        if self.precision not in _PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose one of {', '.join(_PRECISIONS)}.")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise InputError(f"window overlap {self.overlap} is outside [0, 1); 0.5 is a good default.")

    def cli_arguments(self) -> list[str]:
        arguments = ["--device", self.device, "--precision", self.precision]
        if self.overlap is not None:
            arguments += ["--overlap", str(self.overlap)]
        if self.largest_component:
            arguments.append("--largest-component")
        if not self.mirroring:
            arguments.append("--no-mirroring")
        return arguments


@dataclass
class EngineOutputs:
    """What a run wrote, read back: the label map, and the maps the model gives (else None)."""

    label_map: sitk.Image
    confidence: sitk.Image | None
    sdm: sitk.Image | None
    organ_sdms: dict[int, sitk.Image]  #: by label value


class SegmentationRun(FolderJob):
    """One volume being segmented by the engine in a child process."""

    def __init__(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        card: ModelCard,
        options: RunOptions,
        python_executable: str | None = None,
        environment: dict[str, str] | None = None,
        roi: RegionOfInterest | None = None,
        roi_warnings: Sequence[str] = (),
        temp_dir: str | Path | None = None,
        engine: WarmEngine | None = None,
    ) -> None:
        self.volume_node = volume_node
        self.card = card
        #: Said about the ROI before the run (it was clipped to the volume), shown with the result.
        self.roi_warnings = list(roi_warnings)
        self.input_image = image_from_volume_node(volume_node)
        folder = tempfile.TemporaryDirectory(prefix="asdseg-", dir=temp_dir)
        path = Path(folder.name)
        self._paths = {"input": path / "input.nrrd", "label": path / "label.nrrd"}
        arguments = ["segment", "--model", card.name, *options.cli_arguments()]
        if roi is not None:
            arguments += roi.cli_arguments()
        if card.has_confidence:
            self._paths["confidence"] = path / "confidence.nrrd"
            arguments += ["--confidence", str(self._paths["confidence"])]
        if card.has_sdm:
            self._paths["sdm"] = path / "sdm.nrrd"
            arguments += ["--sdm", str(self._paths["sdm"])]
        arguments += ["--input", str(self._paths["input"]), "--output", str(self._paths["label"])]
        try:
            write_image_file(self.input_image, self._paths["input"], compress=False)
        except BaseException:
            folder.cleanup()
            raise
        super().__init__(folder, arguments, python_executable, environment, engine)

    def read_outputs(self) -> EngineOutputs:
        """The engine's outputs, checked to lie on the input's voxel grid."""
        images = {"label": read_image(self._paths["label"]), "confidence": None, "sdm": None}
        organ_sdms = {}
        if "confidence" in self._paths:
            images["confidence"] = read_image(self._paths["confidence"])
        if "sdm" in self._paths:
            values = [label.value for label in self.card.foreground_labels]
            organ_sdms = {
                value: read_image(path)
                for value, path in sdm_output_paths(self._paths["sdm"], values).items()
            }
            # One overlay for all organs: the signed distance to the nearest organ surface.
            maps = list(organ_sdms.values())
            images["sdm"] = maps[0] if len(maps) == 1 else _voxelwise_minimum(maps)
        for name, image in [*images.items(), *((f"SDM {value}", sdm) for value, sdm in organ_sdms.items())]:
            if image is not None and not same_geometry(image, self.input_image, tolerance=1e-4):
                raise AsdsegError(f"the engine's {name} output does not match the input's voxel grid.")
        return EngineOutputs(images["label"], images["confidence"], images["sdm"], organ_sdms)


def _voxelwise_minimum(images: list[sitk.Image]) -> sitk.Image:
    minimum = images[0]
    for image in images[1:]:
        minimum = sitk.Minimum(minimum, image)
    return minimum
