"""Honest feedback for a teach round: some of the user's corrected slices are held out of the
fine-tuning, and the new model must do at least as well as the old one on them to be installed.

Every ``every``-th corrected slice, counted over all volumes in order (volume by volume, slice
by slice), is held out: with corrections from several volumes and sessions the held-out slices
are spread over all of them. A volume keeps at least one slice to train on. The score is the
Dice of each foreground class pooled over every held-out slice, averaged over the classes the
held-out slices or the prediction hold: one number per model, old and new, on the same slices.
A new model whose prediction holds NaN or infinite values (a fine-tuning that diverged) is
refused like a worse one, and the verdict says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from torch import nn

from asdseg.active.sparse_labels import SparseLabels
from asdseg.errors import InputError, NumericalError
from asdseg.evaluation.metrics import mean_class_dice
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.json_files import write_json
from asdseg.registry.model_card import ModelCard

#: The share of corrected slices a teach round holds out: one in five.
HOLD_OUT_EVERY = 5


@dataclass(frozen=True)
class HoldOut:
    """One volume's corrections split into the slices trained on and the slices held out."""

    training: SparseLabels
    held_out: frozenset[int]


@dataclass(frozen=True)
class TeachVerdict:
    """The old and the new model on the held-out slices, and whether the new one may be installed."""

    old_dice: float
    new_dice: float
    held_out_slices: int
    #: The new model predicted NaN or infinite values; its Dice is counted as 0.
    new_model_broken: bool = False

    @property
    def accepted(self) -> bool:
        return not self.new_model_broken and self.new_dice >= self.old_dice

    def message(self) -> str:
        if self.new_model_broken:
            return (
                "The new model predicts NaN or infinite values (its fine-tuning diverged). It was not "
                "installed; the run is kept. Teach again with fewer steps or a smaller learning rate."
            )
        comparison = (
            f"Dice {100 * self.new_dice:.1f} against {100 * self.old_dice:.1f} for the model it started "
            f"from, on {self.held_out_slices} corrected slice(s) held out of the training"
        )
        if self.accepted:
            return f"The new model is at least as good: {comparison}."
        return f"The new model is worse: {comparison}. It was not installed; the run is kept."

    def to_dict(self) -> dict:
        return {
            "old_dice": round(self.old_dice, 6),
            "new_dice": round(self.new_dice, 6),
            "held_out_slices": self.held_out_slices,
            "new_model_broken": self.new_model_broken,
            "accepted": self.accepted,
        }


def hold_out(corrections: Sequence[SparseLabels], every: int = HOLD_OUT_EVERY) -> list[HoldOut]:
    """Each volume's corrections with every ``every``-th corrected slice overall held out."""
    if every < 2:
        raise InputError(f"holding out every {every}th slice would leave nothing to train on; use 2 or more.")
    total = sum(len(sparse.labelled_slices) for sparse in corrections)
    if total < every:
        raise InputError(
            f"{total} corrected slice(s) are too few to hold one in {every} out; correct at least {every} "
            "slices (or teach without the check)."
        )
    splits, position = [], 0
    for sparse in corrections:
        ordered = sorted(sparse.labelled_slices)
        held = {index for offset, index in enumerate(ordered, position + 1) if offset % every == 0}
        if held and held == set(ordered):
            held.discard(ordered[0])  # keep a slice to train on
        position += len(ordered)
        splits.append(HoldOut(SparseLabels(sparse.label, set(ordered) - held), frozenset(held)))
    return splits


def held_out_dice(
    card: ModelCard,
    network: nn.Module,
    images: Sequence[sitk.Image],
    splits: Sequence[HoldOut],
    options: SegmentationOptions | None = None,
) -> float:
    """Mean over foreground classes of the Dice pooled over every held-out slice."""
    predicted, truth = [], []
    for image, split in zip(images, splits):
        if not split.held_out:
            continue
        chosen = sorted(split.held_out)
        predicted.append(segment_image(image, card, network, options).label_array()[:, :, chosen].ravel())
        truth.append(split.training.label[:, :, chosen].ravel())
    if not predicted:
        raise InputError("no slice was held out; nothing to compare the models on.")
    values = [label.value for label in card.foreground_labels]
    return mean_class_dice(np.concatenate(predicted), np.concatenate(truth), values)


def judge(
    old_card: ModelCard,
    old_network: nn.Module,
    new_card: ModelCard,
    new_network: nn.Module,
    images: Sequence[sitk.Image],
    splits: Sequence[HoldOut],
    options: SegmentationOptions | None = None,
) -> TeachVerdict:
    """Both models on the same held-out slices. The old model's NaN is an error (its weights or the
    input are broken); the new model's is a verdict against it."""
    old_dice = held_out_dice(old_card, old_network, images, splits, options)
    held_out_slices = sum(len(split.held_out) for split in splits)
    try:
        new_dice = held_out_dice(new_card, new_network, images, splits, options)
    except NumericalError:
        return TeachVerdict(old_dice, 0.0, held_out_slices, new_model_broken=True)
    return TeachVerdict(old_dice, new_dice, held_out_slices)


def teach_verdict(
    old_card: ModelCard,
    new_card: ModelCard,
    images: Sequence[sitk.Image],
    splits: Sequence[HoldOut],
    device: str = "auto",
) -> TeachVerdict:
    """Both models, loaded from their cards, scored on the corrected slices the round held out,
    as Segment runs them: bf16 where native, for both models alike, but fp32 where ``auto`` would
    be fp16 (7.x GPUs), whose overflow would pass for a worse model."""
    from asdseg.devices import auto_training_precision, select_device
    from asdseg.registry import load_network

    precision = auto_training_precision(select_device(device))
    options = SegmentationOptions(device=device, precision=precision)
    return judge(old_card, load_network(old_card), new_card, load_network(new_card), images, splits, options)


def write_teach_report(path: Path, verdict: TeachVerdict, installed: ModelCard | None) -> None:
    """The round's report at ``path`` (beside the run): the verdict and the name the model was
    installed under (None when it was worse, or not asked to be installed), which ASDSeg's Teach
    reads."""

    report = {**verdict.to_dict(), "installed": installed.name if installed is not None else None}
    write_json(path, report)


def taught_model_name(site_name: str) -> str:
    """The name the next teach round of ``site_name`` installs under: ``site_name`` for the
    first, then ``site_name-v2``, ``site_name-v3``...: every round stays installed, so going back
    to an earlier one (or to the shipped model, never replaced) is picking it in the model list."""
    from asdseg.registry import available_models

    taken = set(available_models(warn=lambda message: None))
    if site_name not in taken:
        return site_name
    version = 2
    while f"{site_name}-v{version}" in taken:
        version += 1
    return f"{site_name}-v{version}"


def install_taught_model(model_dir: Path, site_name: str) -> ModelCard:
    """Install a teach round's model (``<run>/model``) into the user's model folder under
    :func:`taught_model_name`, its card's name and version set to match."""
    from asdseg.registry import load_network, save_model, user_models_dir
    from asdseg.registry.model_card import check_model_name

    check_model_name(site_name, "the site's model name")
    card = ModelCard.load(model_dir / "card.json")
    name = taught_model_name(site_name)
    version = name.rsplit("-v", 1)[1] if name != site_name else "1"
    data = {**card.data, "name": name, "version": version}
    return save_model(load_network(card), data, user_models_dir() / name, half_precision=True)
