"""Sliding-window inference over a whole volume.

Windows are laid out, weighted and blended exactly as MONAI's ``sliding_window_inference`` does
(window starts every ``patch * (1 - overlap)`` voxels, the last one flush with the border; a
Gaussian importance map with sigma = patch / 8; a volume smaller than the patch padded
symmetrically with zeros and cropped back), which a test checks against MONAI itself. It is
written out here rather than imported because importing ``monai`` loads the whole package
(about 1.8 s, half of a command's start-up) for these few lines. Around it this module adds what
the product needs: softmax/blending of every named output of the network (probabilities, SDM,
confidence), test-time mirroring, autocast, progress per window and cancellation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from asdseg.devices import autocast
from asdseg.progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from asdseg.registry.model_card import ModelCard


@dataclass(frozen=True)
class WindowSettings:
    """How windows are laid out and blended."""

    patch_size: tuple[int, int, int]
    overlap: float = 0.5
    blend: Literal["gaussian", "constant"] = "gaussian"
    batch_size: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    #: Axes of the (x, y, z) volume to mirror at test time: each window is predicted once per
    #: combination of flips along them (2 ** len passes) and the outputs are averaged, as nnU-Net
    #: does. Mirror only axes the model was trained to be flip-invariant along (the LA recipes
    #: flip in the axial plane, x and y).
    mirror_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in ("gaussian", "constant"):
            raise ValueError(f"blend must be 'gaussian' or 'constant', got {self.blend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if len(set(self.mirror_axes)) != len(self.mirror_axes) or not set(self.mirror_axes) <= {0, 1, 2}:
            raise ValueError(f"mirror axes must be distinct axes among 0, 1, 2, got {self.mirror_axes}")

    def flips(self) -> list[tuple[int, ...]]:
        """The tensor dimensions (batch and channel first) to flip, one entry per pass; the
        first pass flips nothing."""
        return [
            tuple(axis + 2 for axis in combination)
            for count in range(len(self.mirror_axes) + 1)
            for combination in itertools.combinations(self.mirror_axes, count)
        ]


def card_window_settings(card: ModelCard, **overrides: Any) -> WindowSettings:
    """Window layout from ``card``'s inference section, with user overrides (overlap, batch,
    precision...; None keeps the card's)."""
    inference = card.data["inference"]
    settings: dict[str, Any] = {
        "patch_size": tuple(inference["patch_size"]),
        "overlap": inference["overlap"],
        "blend": inference["blend"],
        "mirror_axes": tuple(inference.get("mirror_axes", ())),
    }
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return WindowSettings(**settings)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Where windows start along an axis of ``size`` voxels (at least ``patch``): every
    ``patch * (1 - overlap)`` voxels, the last one moved back to end at the border."""
    if size == patch:
        return [0]
    step = max(int(patch * (1 - overlap)), 1)
    count = math.ceil((size - patch) / step) + 1
    return [min(index * step, size - patch) for index in range(count)]


def window_count(volume_shape: Sequence[int], settings: WindowSettings) -> int:
    """Number of windows cut from ``volume_shape`` (after padding it up to the patch)."""
    return math.prod(
        len(window_starts(max(size, patch), patch, settings.overlap))
        for size, patch in zip(volume_shape, settings.patch_size)
    )


def importance_map(patch_size: Sequence[int], blend: str) -> torch.Tensor:
    """Each window's weight per voxel: 1 (``constant``), or a Gaussian of sigma = patch / 8
    peaking at 1 in the centre, never below 0.001 (``gaussian``)."""
    if blend == "constant":
        return torch.ones(tuple(patch_size))
    weights = torch.ones(())
    for size in patch_size:
        offsets = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1)
        weights = weights.unsqueeze(-1) * torch.exp(offsets**2 / (-2 * (size * 0.125) ** 2))
    return weights.clamp(min=max(weights.min().item(), 1e-3))


Box = tuple[slice, slice, slice]


def window_boxes(shape: Sequence[int], settings: WindowSettings) -> list[Box]:
    """The windows over a volume of ``shape`` (at least the patch along every axis), the last
    axis varying fastest."""
    starts = [window_starts(size, patch, settings.overlap) for size, patch in zip(shape, settings.patch_size)]
    return [
        tuple(slice(start, start + patch) for start, patch in zip(corner, settings.patch_size))
        for corner in itertools.product(*starts)
    ]


def blend_windows(
    image: torch.Tensor,
    settings: WindowSettings,
    predictor: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Every output of ``predictor`` over the (1, 1, x, y, z) ``image``, window by window
    (``settings.batch_size`` at a time), blended into whole volumes."""
    shape = image.shape[2:]
    padding = [max(patch - size, 0) for size, patch in zip(shape, settings.patch_size)]
    before = [width // 2 for width in padding]
    widths = [width for axis in (2, 1, 0) for width in (before[axis], padding[axis] - before[axis])]
    padded = torch.nn.functional.pad(image, widths) if any(padding) else image
    boxes = window_boxes(padded.shape[2:], settings)
    weights = importance_map(settings.patch_size, settings.blend).to(image.device)[None, None]
    everything = (slice(None), slice(None))
    sums: dict[str, torch.Tensor] = {}
    for first in range(0, len(boxes), settings.batch_size):
        batch = boxes[first : first + settings.batch_size]
        outputs = predictor(torch.cat([padded[(*everything, *box)] for box in batch]))
        for name, tensor in outputs.items():
            if name not in sums:
                sums[name] = torch.zeros((1, tensor.shape[1], *padded.shape[2:]), device=image.device)
            for window, box in zip(tensor * weights, batch):
                sums[name][(*everything, *box)] += window[None]
    coverage = torch.zeros((1, 1, *padded.shape[2:]), device=image.device)
    for box in boxes:
        coverage[(*everything, *box)] += weights
    crop = tuple(slice(start, start + size) for start, size in zip(before, shape))
    return {name: (total / coverage)[(*everything, *crop)] for name, total in sums.items()}


def memory_layout(device: torch.device) -> torch.memory_format | None:
    """Channels-last (NDHWC) on the CPU: the same arithmetic, and oneDNN's convolutions run
    faster on it (a la-sassnet-72 window 1.32x in fp32, 1.25x in bf16, 1.31x with AVX2 kernels;
    the smaller shipped models' windows 1.1-1.3x in bf16, 0.8-1.1x in fp32, where one window
    takes about a tenth of a second: benchmarks/results/memory_layout.json). Elsewhere None: the
    network keeps the layout it has (nothing was measured on GPUs)."""
    return torch.channels_last_3d if device.type == "cpu" else None


def predict_volume(
    network: nn.Module,
    volume: np.ndarray,
    settings: WindowSettings,
    device: torch.device,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, np.ndarray]:
    """Run ``network`` over the normalised (x, y, z) ``volume``.

    Returns float32 arrays: ``probabilities`` (classes, x, y, z) and, when the network
    produces them, ``attention_probabilities`` (classes, x, y, z; the attention U-Net's second
    prediction), ``sdm`` (foreground classes, x, y, z) and ``confidence`` (x, y, z).
    Volumes smaller than the patch are padded and cropped back.
    """
    total = window_count(volume.shape, settings)
    done = 0
    flips = settings.flips()
    layout = memory_layout(device)

    def one_pass(windows: torch.Tensor, dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The blendable outputs for ``windows`` flipped along ``dims``, flipped back."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        windows = windows.flip(dims) if dims else windows
        if layout is not None:
            windows = windows.contiguous(memory_format=layout)
        with autocast(device, settings.precision):
            outputs = network(windows)
        blendable = {"probabilities": torch.softmax(outputs["logits"].float(), dim=1)}
        if "attention_logits" in outputs:
            blendable["attention_probabilities"] = torch.softmax(outputs["attention_logits"].float(), dim=1)
        for name in ("sdm", "confidence"):
            if name in outputs:
                blendable[name] = outputs[name].float()
        return {name: tensor.flip(dims) if dims else tensor for name, tensor in blendable.items()}

    def predictor(windows: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal done
        passes = [one_pass(windows, dims) for dims in flips]
        blended = {name: torch.stack([outputs[name] for outputs in passes]).mean(dim=0) for name in passes[0]}
        done += windows.shape[0]
        if progress is not None:
            progress(min(done, total), total, "segmenting")
        return blended

    image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    with torch.inference_mode(False):  # else a caller's inference mode makes untrainable weights
        network = network.to(device).eval()
        if layout is not None:
            network.to(memory_format=layout)
    with torch.inference_mode():
        results = blend_windows(image.to(device), settings, predictor)
    arrays = {name: tensor[0].float().cpu().numpy() for name, tensor in results.items()}
    if "confidence" in arrays:
        arrays["confidence"] = arrays["confidence"][0]
    return arrays
