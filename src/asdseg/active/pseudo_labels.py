"""Self-training for a fine-tuning round: every voxel of the round's volumes that no correction
covers is labelled with the model's own prediction where the model is confident of it.

A few corrected slices tell the network what the new site's organ looks like there; the rest of
each volume, unlabelled, tells it nothing. The model, its BatchNorm statistics first re-estimated
on the round's volumes (AdaBN, :mod:`asdseg.training.batchnorm_statistics`), already labels most
of those voxels right with high confidence (on benchmarks/site_adaptation.py's shift, 96-98 % of
the voxels of each volume at 0.9, 98 % of them right), so training on them as well keeps the
round's network anchored to the whole volume while the corrections move it where it was wrong.
The corrected slices keep the annotator's labels. Slices a teach round holds out are unlabelled
here like any other: the new model sees the old model's prediction there, never the correction,
so the held-out verdict stays a fair test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from asdseg.evaluation.metrics import mean_class_dice
from asdseg.inference.sliding_window import WindowSettings, predict_volume
from asdseg.progress import ProgressCallback
from asdseg.registry import load_network
from asdseg.registry.model_card import ModelCard
from asdseg.training.batchnorm_statistics import ROUND_BATCHES, reestimate_batchnorm_statistics
from asdseg.training.data import LABEL_DTYPE, Case
from asdseg.training.losses import UNLABELLED

#: What progress reports call this stage (one unit for AdaBN, then one per volume).
STAGE = "pseudo-labelling"
#: The least Dice between the model's prediction and the corrections, on the corrected slices,
#: for its prediction to be trusted elsewhere: a model that misses the organ where the annotator
#: drew it would teach itself to miss it everywhere else (the phantom model on inverted
#: intensities: Dice 0 there, and its confident "no organ" on the other slices kept a round
#: from learning anything).
MIN_AGREEMENT = 0.5


def pseudo_labelled(
    card: ModelCard,
    cases: Sequence[Case],
    confidence: float,
    device: torch.device,
    seed: int,
    progress: ProgressCallback | None = None,
) -> list[Case] | None:
    """``cases`` (on ``card``'s grid, from :func:`asdseg.active.finetune.model_grid_case`) with
    each unlabelled voxel set to ``card``'s predicted class where its probability is at least
    ``confidence``; labelled voxels are kept as they are. None when the prediction agrees with
    the corrections less than :data:`MIN_AGREEMENT`. ``progress`` hears of each volume done
    after a first unit for the re-estimation, which takes most of the time (la-sassnet-72 on 3
    LA volumes, 2 cores with native bf16: 15 s at 30 batches, then half a second per volume;
    not tracked). Both only run the network forward, so both compute in bf16 where it is
    native, whatever the round's patch (bf16's trouble on thin levels was in the backward
    pass)."""
    report = progress or (lambda done, total, stage: None)
    network = load_network(card).to(device)
    patch_size = tuple(card.data["inference"]["patch_size"])
    reestimate_batchnorm_statistics(network, cases, patch_size, ROUND_BATCHES, 2, device, seed, "auto")
    report(1, len(cases) + 1, STAGE)
    settings = WindowSettings(patch_size=patch_size, precision="auto")
    probabilities = []
    for index, case in enumerate(cases):
        probabilities.append(predict_volume(network, case.image, settings, device)["probabilities"])
        report(index + 2, len(cases) + 1, STAGE)
    if agreement_with_corrections(cases, probabilities) < MIN_AGREEMENT:
        return None
    return [_filled(case, predicted, confidence) for case, predicted in zip(cases, probabilities)]


def agreement_with_corrections(cases: Sequence[Case], probabilities: Sequence[np.ndarray]) -> float:
    """Mean foreground-class Dice of the predicted classes against the corrections, pooled over
    every corrected voxel of ``cases``."""
    predicted, corrected = [], []
    for case, case_probabilities in zip(cases, probabilities):
        labelled = case.label != UNLABELLED
        predicted.append(case_probabilities.argmax(axis=0)[labelled])
        corrected.append(case.label[labelled])
    classes = range(1, len(probabilities[0]))
    return mean_class_dice(np.concatenate(predicted), np.concatenate(corrected), classes)


def _filled(case: Case, probabilities: np.ndarray, confidence: float) -> Case:
    confident = probabilities.max(axis=0) >= confidence
    label = np.where((case.label == UNLABELLED) & confident, probabilities.argmax(axis=0), case.label)
    return replace(case, label=label.astype(LABEL_DTYPE))
