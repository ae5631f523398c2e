"""Sliding-window inference over a whole volume.

Windows are cut, batched and blended by MONAI's ``sliding_window_inference``; this module adds
what the product needs around it: softmax/blending of every named output of the network
(probabilities, SDM, confidence), test-time mirroring, autocast, progress per window and
cancellation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from asdseg.devices import autocast
from asdseg.progress import CancelToken, ProgressCallback


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


def window_count(volume_shape: Sequence[int], settings: WindowSettings) -> int:
    """Number of windows MONAI cuts from ``volume_shape`` (after padding it up to the patch)."""
    count = 1
    for size, patch in zip(volume_shape, settings.patch_size):
        size = max(size, patch)
        if size == patch:
            continue
        step = max(int(patch * (1 - settings.overlap)), 1)
        count *= math.ceil((size - patch) / step) + 1
    return count


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
    Volumes smaller than the patch are padded by MONAI and cropped back.
    """
    total = window_count(volume.shape, settings)
    done = 0
    flips = settings.flips()

    def one_pass(windows: torch.Tensor, dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The blendable outputs for ``windows`` flipped along ``dims``, flipped back."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        with autocast(device, settings.precision):
            outputs = network(windows.flip(dims) if dims else windows)
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
    network = network.to(device).eval()
    with torch.inference_mode():
        results = sliding_window_inference(
            image.to(device),
            roi_size=settings.patch_size,
            sw_batch_size=settings.batch_size,
            predictor=predictor,
            overlap=settings.overlap,
            mode=settings.blend,
        )
    arrays = {name: tensor[0].float().cpu().numpy() for name, tensor in results.items()}
    if "confidence" in arrays:
        arrays["confidence"] = arrays["confidence"][0]
    return arrays
