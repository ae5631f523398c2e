"""Fine-tuning any released segmenter on sparsely labelled volumes: an active-learning round, or
a user's corrections taught to the model.

The volumes are brought onto the model's voxel grid and normalised as inference does, their
sparse labels resampled with them (unlabelled slices stay unlabelled), and the model trained
from its current weights. An attention U-Net trains with its own recipe (the paper's CE over
labelled voxels, on both of its predictions); every other model with the sparse-finetune recipe
(:mod:`asdseg.training.recipes.sparse_finetune`: what a sparse label can teach each head),
which also trains on the model's own confident prediction off the corrected slices
(:mod:`asdseg.active.pseudo_labels`). Both ignore the voxels left unlabelled.
The run writes a resumable checkpoint every ``checkpoint_every`` steps and, only when every step
is done, a new model folder; a stopped or failed run leaves the model it started from as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from asdseg.active.pseudo_labels import pseudo_labelled
from asdseg.active.sparse_labels import SparseLabels
from asdseg.devices import select_device
from asdseg.errors import InputError
from asdseg.io.image_io import array_to_image, image_to_array
from asdseg.preprocessing.transforms import CropBox, normalize_intensity, resample_like, resample_to_spacing
from asdseg.progress import ProgressCallback
from asdseg.registry.model_card import ATTENTION_ARCHITECTURES, ModelCard
from asdseg.training.batchnorm_statistics import ROUND_BATCHES
from asdseg.training.config import DataConfig, TrainingConfig
from asdseg.training.data import LABEL_DTYPE, Case, CaseSplit
from asdseg.training.losses import UNLABELLED
from asdseg.training.trainer import Trainer, TrainingResult

#: The last quarter of a round runs at a tenth of the learning rate, so that the round ends on
#: settled weights rather than wherever the last large SGD steps left them.
FINAL_LOW_RATE_FRACTION = 0.25


#: The smallest patch side a round trains in bf16 at (see :func:`fine_tuning_precision`).
BF16_MIN_PATCH = 64


@dataclass(frozen=True)
class FineTuneSettings:
    steps: int = 200
    #: SGD (momentum 0.9, weight decay 1e-4) rate; None: the recipe's own
    #: (:data:`RECIPE_LEARNING_RATES`).
    learning_rate: float | None = None
    batch_size: int = 2
    checkpoint_every: int = 50
    seed: int = 1337
    #: Keep the segmenter's encoder as it was (only decoder and heads learn); not for
    #: attention models, whose recipe trains the whole network as the paper does.
    freeze_encoder: bool = False
    #: Perturb every batch with nnU-Net's intensity transforms
    #: (:mod:`asdseg.training.intensity_augmentation`); not for attention models, whose recipe
    #: is the paper's. la-sassnet-72 on benchmarks/site_adaptation.py's shift (15 corrected
    #: slices, one seed): Dice 73.7 with, 72.6 without.
    intensity_augmentation: bool = True
    #: Batches of random patches of the fine-tuning volumes the BatchNorm statistics are
    #: re-estimated over at the end (AdaBN, :mod:`asdseg.training.batchnorm_statistics`); 0 keeps
    #: those training left.
    batchnorm_statistics_batches: int = ROUND_BATCHES
    #: Export the average of the weights over the final low-rate steps (SWA) rather than the
    #: last step's (:mod:`asdseg.training.weight_averaging`).
    average_final_weights: bool = True
    #: Train on the model's own prediction wherever no correction covers a voxel and the
    #: prediction's probability is at least this (:mod:`asdseg.active.pseudo_labels`); None:
    #: corrected voxels only. Not for attention models, whose recipe is the paper's.
    #: la-sassnet-72 on benchmarks/site_adaptation.py's shift (15 corrected slices, p-dsc-spread,
    #: two seeds, rows.csv): Dice 76.1 and 74.2 with, 74.1 and 71.9 without.
    pseudo_label_confidence: float | None = 0.9
    #: The patch a round trains on; None: the model's own inference patch
    #: (:func:`fine_tuning_patch`).
    patch_size: tuple[int, int, int] | None = None


#: Each fine-tuning recipe's default learning rate. The attention U-Net's is the paper's: at
#: 0.005, rounds fine-tuning la-attention moved its held-out Dice by up to 4 points from round to
#: round and seed to seed (benchmarks/active_learning_study.py). For sparse-finetune, la-sassnet
#: on the simulated second site of benchmarks/site_adaptation.py (15 corrected slices, 200
#: steps) won back 66 % of the shift's drop at 0.001, 68 % at 0.003 and diverged at 0.01.
RECIPE_LEARNING_RATES = {"attention-unet": 0.001, "sparse-finetune": 0.003}


def class_indices(target: np.ndarray, card: ModelCard, name: str) -> np.ndarray:
    """The training target in the network's class indices (the position of each value in the
    card's labels); a value the model has no label for is refused, naming it."""
    values = [label.value for label in card.labels]
    present = set(np.unique(target).tolist()) - {UNLABELLED}
    unknown = sorted(present - set(values))
    if unknown:
        raise InputError(
            f"{name}: label value(s) {unknown} are not labels of model {card.name!r} (values "
            f"{values}); relabel them or fine-tune a model made for these labels."
        )
    indices = np.full(target.shape, UNLABELLED, dtype=np.int64)
    for index, value in enumerate(values):
        indices[target == value] = index
    return indices


def model_grid_case(
    image: sitk.Image, sparse: SparseLabels, card: ModelCard, name: str, region: CropBox | None = None
) -> Case:
    """A training case on the model's grid: the resampled, normalised image and the training
    target (UNLABELLED off the labelled slices) resampled by nearest neighbour. With ``region``
    (an index box of ``image``, from an ROI) only the box is trained on: the annotator's ROI
    keeps the round on the organ's region, as it keeps the suggestions there."""
    if not sparse.labelled_slices:
        raise InputError(f"{name}: no slice is marked labelled; label and mark at least one slice first.")
    if tuple(image.GetSize()) != sparse.label.shape:
        raise InputError(
            f"{name}: the labels ({sparse.label.shape}) do not match the image ({image.GetSize()})."
        )
    if region is not None:
        image, sparse = image[region.slices], sparse.cropped(region.start, region.stop)
        if not sparse.labelled_slices:
            raise InputError(
                f"{name}: no labelled slice lies inside the ROI (slices {region.start[2]} to "
                f"{region.stop[2] - 1}); move the ROI over labelled slices or label slices inside it."
            )
    resampled = resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), card.spacing)
    target = resample_like(
        array_to_image(class_indices(sparse.training_target(), card, name), image),
        resampled,
        sitk.sitkNearestNeighbor,
    )
    preprocessing = card.data["preprocessing"]
    array = normalize_intensity(
        image_to_array(resampled), preprocessing["normalization"], preprocessing.get("intensity")
    )
    return Case(name, array, image_to_array(target, LABEL_DTYPE), resampled.GetSpacing())


def fine_tuning_patch(card: ModelCard, settings: FineTuneSettings) -> tuple[int, int, int]:
    """The patch a round of ``card``'s model trains on: ``settings.patch_size``, by default the
    model's own. Smaller patches cost far more Dice than the time they save: on
    benchmarks/site_adaptation.py's shift (15 corrected slices, p-dsc-spread), la-sassnet-72
    fine-tuned on 64 x 64 x 32 patches won back 3 % of the drop (commit d4192dc; no row kept),
    on 64 x 64 x 64 (0.44 of the voxels) 35 %, on its own 96 x 96 x 64 68 to 77 % (the last two
    with pseudo-labels, rows.csv)."""
    return tuple(settings.patch_size or card.data["inference"]["patch_size"])


def fine_tuning_precision(patch_size: Sequence[int]) -> str:
    """``auto`` (bf16 where the device has it natively) for patches of at least
    :data:`BF16_MIN_PATCH` voxels along every axis, fp32 for smaller ones: torch 2.13's bf16 CPU
    conv backward gave NaN gradients where a 64 x 64 x 32 patch leaves the networks' deepest
    level (a sixteenth of the patch) 2 voxels thin (AMD EPYC, avx512_bf16). la-sassnet-72's
    96 x 96 x 64 rounds train in bf16 at 1.9 s a step against 3.7 s in fp32."""
    return "auto" if min(patch_size) >= BF16_MIN_PATCH else "fp32"


def fine_tuning_recipe(card: ModelCard, settings: FineTuneSettings) -> tuple[str, dict]:
    """The recipe that fine-tunes ``card``'s model on sparse slices, and its loss settings."""
    if card.data["architecture"]["name"] in ATTENTION_ARCHITECTURES:
        if settings.freeze_encoder:
            raise InputError("freezing the encoder is for models without an attention head.")
        return "attention-unet", {}
    return "sparse-finetune", {
        "freeze_encoder": settings.freeze_encoder,
        "intensity_augmentation": settings.intensity_augmentation,
    }


def fine_tuned_card(
    card: ModelCard, name: str, cases: Sequence[Case], pseudo_label_confidence: float | None = None
) -> dict:
    """The new model's card: the original's, renamed, saying what it was fine-tuned on. A
    confidence calibration is dropped: it was fitted to the original network's outputs."""
    labelled = sum(int((case.label != UNLABELLED).any(axis=(0, 1)).sum()) for case in cases)
    trained_on = f"{len(cases)} volume(s) with {labelled} labelled slice(s) on the model grid"
    if pseudo_label_confidence is not None:
        trained_on += f"; elsewhere its own prediction where at least {pseudo_label_confidence:g} sure"
    data = {key: value for key, value in card.data.items() if key != "confidence_calibration"}
    return {
        **data,
        "name": name,
        "description": f"{card.name} fine-tuned on sparse slice labels of {len(cases)} volume(s).",
        "training": {
            "data": trained_on,
            "protocol": "fine-tuning on sparsely labelled slices (active learning or a user's corrections)",
            "fine_tuned_from": f"{card.name} {card.data['version']}",
        },
    }


def fine_tune(
    card: ModelCard,
    cases: Sequence[Case],
    output_dir: str | Path,
    settings: FineTuneSettings = FineTuneSettings(),
    name: str | None = None,
    device: str = "auto",
    on_step: Callable[[dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainingResult:
    """Train ``card``'s model further on ``cases`` (from :func:`model_grid_case`) into
    ``output_dir``; its ``model`` folder holds the new model when the run completes. With
    ``resume``, a stopped round continues from the checkpoint in ``output_dir``. ``progress``
    follows the pseudo-labelling before the first step; ``on_step`` and ``show_progress`` the
    steps."""
    if not cases:
        raise InputError("nothing to fine-tune on: give at least one labelled volume.")
    recipe, loss = fine_tuning_recipe(card, settings)
    training, used_confidence = list(cases), None
    if recipe == "sparse-finetune" and settings.pseudo_label_confidence is not None:
        confidence = settings.pseudo_label_confidence
        filled = pseudo_labelled(card, training, confidence, select_device(device), settings.seed, progress)
        if filled is not None:
            training, used_confidence = filled, confidence
    low_rate_from = max(1, round(settings.steps * (1 - FINAL_LOW_RATE_FRACTION)))
    patch_size = fine_tuning_patch(card, settings)
    config = TrainingConfig(
        recipe=recipe,
        data=DataConfig(
            labelled=len(cases),
            validation=0,
            normalization=card.data["preprocessing"]["normalization"],
            intensity=card.data["preprocessing"].get("intensity"),
        ),
        network=card.data["architecture"],
        labels=card.data["labels"],
        patch_size=patch_size,
        batch_size=settings.batch_size,
        labelled_per_batch=settings.batch_size,
        steps=settings.steps,
        learning_rate=settings.learning_rate or RECIPE_LEARNING_RATES[recipe],
        lr_decay_every=low_rate_from,
        lr_decay_factor=0.1,
        validate_every=settings.steps,
        checkpoint_every=min(settings.checkpoint_every, settings.steps),
        seed=settings.seed,
        loss=loss,
        precision=fine_tuning_precision(patch_size),
        init_from=str(card.directory),
        batchnorm_statistics_batches=settings.batchnorm_statistics_batches,
        average_weights_after=low_rate_from if settings.average_final_weights else None,
    )
    split = CaseSplit(labelled=training, unlabelled=[], validation=[])
    base_card = fine_tuned_card(card, name or f"{card.name}-finetuned", cases, used_confidence)
    trainer = Trainer(config, output_dir, device=device, split=split, base_card=base_card)
    if resume:
        trainer.resume()
    return trainer.run(show_progress=show_progress, on_step=on_step, should_stop=should_stop)
