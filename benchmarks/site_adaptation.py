"""Site adaptation on LA 2018: how much of a site shift's Dice drop a model wins back by learning
from a few corrected slices, per slice-choosing strategy.

The shift (this benchmark's own design; models are also scored on a shift it does not know):

- slice thickness: every 4 axial slices of the 0.625 mm scans averaged into one 2.5 mm slice (the
  label: the majority of the 4);
- intensity curve: a gamma of 0.5 on the intensities scaled to [0, 1], back to their range;
- bias field: a smooth multiplicative field, exp(0.8 x) along one axial axis and exp(-0.5 y^2)
  along the other (x, y in [-1, 1]): about 8x between the darkest and brightest corner;
- noise: Rician, sigma 8 % of the 99th intensity percentile.

Cases: the last 8 of ``train.list``, which no shipped model trained on. Adaptation volumes are the
first 1 or 3 of them; the other 5 are scored (Dice of the left atrium on the shifted grid, no
test-time mirroring, so every row costs the same). For each model, strategy, budget (corrected
slices per volume), number of volumes and repeat: the strategy picks slices on each adaptation
volume with the shipped model, the simulated annotator corrects the model's prediction on them
(the ground truth; effort = voxels changed from the prediction), and the shipped model is
fine-tuned on those slices (``asdseg finetune``'s defaults, BatchNorm statistics re-estimated on
the adaptation volumes included, unless ``--steps`` / ``--learning-rate`` / ``--batchnorm-batches``
say otherwise). Recovered = (after - shifted) / (before - shifted). ``--strategies all-slices``
(not a strategy) corrects every slice of each adaptation volume: the most a round can learn from
those volumes, the ceiling of the strategies' rows (its budget column is the volumes' slice count).

Writes ``rows.csv``, ``results.json`` (with the machine), ``results.md`` and ``recovery.png`` to
``--output`` (tracked: ``benchmarks/results/site_adaptation``). A row already in ``rows.csv`` is
not run again, so an interrupted run continues.

    python benchmarks/site_adaptation.py --models la-sassnet la-dan la-attention --budgets 5 \
        --volumes 3 --strategies p-dsc-spread foreground-random --repeats 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from asdseg.active.finetune import (
    RECIPE_LEARNING_RATES,
    FineTuneSettings,
    fine_tune,
    fine_tuning_patch,
    fine_tuning_precision,
    model_grid_case,
)
from asdseg.active.sparse_labels import SparseLabels
from asdseg.active.suggest import suggest_slices
from asdseg.data_paths import require_la2018
from asdseg.devices import auto_precision
from asdseg.evaluation.metrics import dice
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.atomic_write import atomic_path
from asdseg.io.datasets import case_names
from asdseg.io.image_io import image_to_array, read_image
from asdseg.io.json_files import write_json
from asdseg.machine import describe_machine, machine_line
from asdseg.registry import find_model, load_network
from asdseg.registry.model_card import ModelCard

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "site_adaptation"
THICKNESS = 4  #: 0.625 mm slices averaged into one
GAMMA = 0.5
NOISE = 0.08
BIAS = (0.8, 0.5)  #: exp(a x) along one axial axis, exp(-b y^2) along the other
POOL = 8  #: the last cases of train.list: adaptation volumes first, then the scored ones
ADAPTATION = 3
#: Every slice of each adaptation volume corrected: the rows' ceiling, not a strategy.
ALL_SLICES = "all-slices"
#: No test-time mirroring while scoring: the same cost for every row.
SCORING = SegmentationOptions(mirror_axes=())


@dataclass
class ShiftedCase:
    name: str
    original: sitk.Image
    original_label: np.ndarray
    image: sitk.Image  #: the shifted scan
    label: np.ndarray  #: the label on its grid


def thick_slices(image: sitk.Image, label: sitk.Image) -> tuple[sitk.Image, np.ndarray]:
    """Every THICKNESS slices averaged (image) or voted (label) into one, the spacing scaled."""
    array, labels = image_to_array(image), image_to_array(label, np.int64)
    count = array.shape[2] // THICKNESS
    blocks = array[:, :, : count * THICKNESS].reshape(*array.shape[:2], count, THICKNESS)
    votes = labels[:, :, : count * THICKNESS].reshape(*labels.shape[:2], count, THICKNESS)
    thick = sitk.GetImageFromArray(np.ascontiguousarray(blocks.mean(axis=3).transpose(2, 1, 0)))
    spacing = image.GetSpacing()
    thick.SetSpacing((spacing[0], spacing[1], spacing[2] * THICKNESS))
    thick.SetDirection(image.GetDirection())
    # The thick slice's centre lies 1.5 thin slices past the first of its four.
    offset = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2] * spacing[2] * (THICKNESS - 1) / 2
    thick.SetOrigin(tuple(np.asarray(image.GetOrigin()) + offset))
    return thick, (votes.mean(axis=3) >= 0.5).astype(np.int64)


def shifted(image: sitk.Image, label: sitk.Image, seed: int) -> tuple[sitk.Image, np.ndarray]:
    """The scan as the other site would acquire it (see the module docstring)."""
    thick, thick_label = thick_slices(image, label)
    array = image_to_array(thick)
    low, high = float(array.min()), float(array.max())
    curved = low + (high - low) * ((array - low) / max(high - low, 1e-6)) ** GAMMA
    x = np.linspace(-1, 1, array.shape[0])[:, None, None]
    y = np.linspace(-1, 1, array.shape[1])[None, :, None]
    biased = curved * np.exp(BIAS[0] * x) * np.exp(-BIAS[1] * y**2)
    rng = np.random.default_rng(seed)
    sigma = NOISE * float(np.percentile(biased, 99))
    noisy = np.hypot(biased + rng.normal(0, sigma, biased.shape), rng.normal(0, sigma, biased.shape))
    result = sitk.GetImageFromArray(np.ascontiguousarray(noisy.astype(np.float32).transpose(2, 1, 0)))
    result.CopyInformation(thick)
    return result, thick_label


def load_cases(root: Path) -> list[ShiftedCase]:
    cases = []
    for index, name in enumerate(case_names(root)[-POOL:]):
        image = read_image(root / "train" / name / "image.nii.gz")
        label = read_image(root / "train" / name / "label.nii.gz")
        shifted_image, shifted_label = shifted(image, label, seed=index)
        cases.append(ShiftedCase(name, image, image_to_array(label, np.int64), shifted_image, shifted_label))
    return cases


def atrium_dice(card: ModelCard, network, image: sitk.Image, label: np.ndarray) -> float:
    prediction = segment_image(image, card, network, SCORING).label_array()
    return dice(prediction == 1, label == 1)


def mean_dice(card: ModelCard, images_labels: list[tuple[sitk.Image, np.ndarray]]) -> float:
    network = load_network(card)
    return float(np.mean([atrium_dice(card, network, image, label) for image, label in images_labels]))


def corrected_slices(
    card: ModelCard, case: ShiftedCase, strategy: str, budget: int, seed: int
) -> tuple[SparseLabels, int]:
    """The slices ``strategy`` asks for on the shifted volume (every slice for
    :data:`ALL_SLICES`), corrected to the truth, and the voxels the annotator changed from the
    model's prediction there."""
    if strategy == ALL_SLICES:
        prediction = segment_image(case.image, card, load_network(card), SCORING).label_array()
        every_slice = set(range(case.label.shape[2]))
        return SparseLabels(case.label, every_slice), int((prediction != case.label).sum())
    suggestion = suggest_slices(
        case.image,
        card,
        load_network(card),
        set(),
        strategy,
        budget,
        SCORING,
        rng=np.random.default_rng(seed),
    )
    chosen = sorted(query.slice for query in suggestion.queries)
    prediction = suggestion.segmentation.label_array()
    changed = int((prediction[:, :, chosen] != case.label[:, :, chosen]).sum())
    return SparseLabels(case.label, set(chosen)), changed


def adapt(
    card: ModelCard,
    cases: list[ShiftedCase],
    strategy: str,
    budget: int,
    seed: int,
    settings: FineTuneSettings,
    folder: Path,
) -> tuple[ModelCard, int, float]:
    """The model fine-tuned into ``folder`` on corrected slices of ``cases``, the voxels the
    annotator changed, and the minutes it took (suggesting included)."""
    started = time.monotonic()
    training, effort = [], 0
    for index, case in enumerate(cases):
        sparse, changed = corrected_slices(card, case, strategy, budget, seed + index)
        training.append(model_grid_case(case.image, sparse, card, case.name))
        effort += changed
    result = fine_tune(card, training, folder, replace(settings, seed=seed), device="cpu")
    return result.model, effort, (time.monotonic() - started) / 60


#: What the rows written before rows recorded it were fine-tuned with (the 16-label models' patch).
EARLIER_FINE_TUNING = "64x64x32"
#: The batches BatchNorm statistics were re-estimated over in rows written before rows recorded it.
EARLIER_BATCHNORM_BATCHES = "30"


def fine_tuning_label(card: ModelCard, settings: FineTuneSettings, precision: str | None = None) -> str:
    """How a row's model was fine-tuned, where settings differ between rows: patch, batch when
    not the default, a frozen encoder, augmentation, pseudo-labels and, when not fp32, precision
    (``precision``: as the round would resolve it on another CPU; None: on this one)."""
    patch = "x".join(map(str, fine_tuning_patch(card, settings)))
    label = patch + (
        "" if settings.batch_size == FineTuneSettings.batch_size else f", batch {settings.batch_size}"
    )
    label += ", encoder frozen" if settings.freeze_encoder else ""
    label += ", intensity augmentation" if settings.intensity_augmentation else ""
    if settings.pseudo_label_confidence is not None:
        label += f", pseudo-labels >= {settings.pseudo_label_confidence:g}"
    chosen = fine_tuning_precision(fine_tuning_patch(card, settings))
    if chosen == "auto":
        chosen = precision or auto_precision(torch.device("cpu"))
    return label + ("" if chosen == "fp32" else f", {chosen}")


def default_labels(card: ModelCard) -> list[str]:
    """The labels of ``card``'s rows fine-tuned with the defaults, on a CPU without native bf16
    and on one with it (the same label where the round trains in fp32 anyway)."""
    return list(dict.fromkeys(fine_tuning_label(card, FineTuneSettings(), p) for p in ("fp32", "bf16")))


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [
            {"fine_tuning": EARLIER_FINE_TUNING, "batchnorm_batches": EARLIER_BATCHNORM_BATCHES, **row}
            for row in csv.DictReader(handle)
        ]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


KEY = ("model", "fine_tuning", "batchnorm_batches", "strategy", "budget", "volumes", "repeat")
#: A summary's group: the key without the repeat.
GROUP = KEY[:-1]


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(str(row[key]) for key in KEY)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean recovery, Dice and effort per model, fine-tuning, BatchNorm batches, strategy, budget
    and volumes; the machines their rows ran on, and which group was measured last."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    latest: dict[tuple, int] = {}
    for position, row in enumerate(rows):
        groups.setdefault(row_key(row)[:-1], []).append(row)
        latest[row_key(row)[:-1]] = position
    summary = []
    for group, members in sorted(groups.items()):
        model, fine_tuning, batchnorm_batches, strategy, budget, volumes = group
        values = {
            key: [float(row[key]) for row in members] for key in ("after", "recovered", "effort_voxels")
        }
        first = members[0]
        summary.append(
            {
                "model": model,
                "fine_tuning": fine_tuning,
                "batchnorm_batches": int(batchnorm_batches),
                "strategy": strategy,
                "budget": int(budget),
                "volumes": int(volumes),
                "slices": int(budget) * int(volumes),
                "repeats": len(members),
                "before": float(first["before"]),
                "shifted": float(first["shifted"]),
                "after": statistics.mean(values["after"]),
                "recovered": statistics.mean(values["recovered"]),
                "recovered_min": min(values["recovered"]),
                "recovered_max": max(values["recovered"]),
                "effort_voxels": statistics.mean(values["effort_voxels"]),
                #: Drop won back (percentage points) per 10,000 voxels the annotator changed: the
                #: strategies compared at equal effort, since a strategy that picks the slices the
                #: model got wrong asks for more correcting per slice.
                "recovered_per_10k_voxels": per_10k_voxels(values["recovered"], values["effort_voxels"]),
                #: The position of the group's latest row in rows.csv: which setting was measured last.
                "latest_row": latest[group],
                "machines": sorted({row["machine"] for row in members if row.get("machine")}),
            }
        )
    return summary


def per_10k_voxels(recovered: list[float], effort_voxels: list[float]) -> float | None:
    """Mean percentage points of the drop won back per 10,000 voxels corrected (None without
    corrections)."""
    effort = statistics.mean(effort_voxels)
    return 100 * statistics.mean(recovered) / (effort / 10_000) if effort else None


def write_report(output: Path, rows: list[dict[str, Any]], settings: FineTuneSettings) -> None:
    summary = summarise(rows)
    rates = ", ".join(f"{rate} ({recipe})" for recipe, rate in RECIPE_LEARNING_RATES.items())
    # How each model's rows are labelled when fine-tuned with the defaults (in fp32 or bf16): the
    # README reports those, not whichever variant was measured last.
    defaults = {model: default_labels(find_model(model)) for model in {row["model"] for row in rows}}
    result = {
        "machine": describe_machine(),
        "settings": settings.__dict__,
        "default_fine_tuning": defaults,
        "default_batchnorm_batches": FineTuneSettings.batchnorm_statistics_batches,
        "summary": summary,
    }
    write_json(output / "results.json", result)
    lines = [
        "# Site adaptation on LA 2018 (generated by benchmarks/site_adaptation.py)",
        "",
        f"Machines: {'; '.join(sorted({m for item in summary for m in item['machines']}))} (each "
        f"row's in rows.csv). Fine-tuning: {settings.steps} steps, learning rate "
        f"{settings.learning_rate or rates}, batch {settings.batch_size}"
        f"{', encoder frozen' if settings.freeze_encoder else ''}; BatchNorm statistics re-estimated "
        "over the batches of the adaptation volumes the table says (0: not). "
        "Dice of the left atrium (%) on 5 shifted held-out cases, no test-time mirroring.",
        "",
        "| model | fine-tuning | BatchNorm batches | strategy | slices (per volume x volumes) "
        "| before shift | shifted | after | recovered (min-max) | voxels corrected "
        "| recovered per 10k voxels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in summary:
        lines.append(
            f"| {item['model']} | {item['fine_tuning']} | {item['batchnorm_batches']} | {item['strategy']} | "
            f"{item['slices']} ({item['budget']} x {item['volumes']}) | "
            f"{100 * item['before']:.1f} | {100 * item['shifted']:.1f} | {100 * item['after']:.1f} | "
            f"{100 * item['recovered']:.0f} % "
            f"({100 * item['recovered_min']:.0f}-{100 * item['recovered_max']:.0f}) | "
            f"{item['effort_voxels']:.0f} (over {item['repeats']} repeat(s)) | "
            f"{per_10k_text(item['recovered_per_10k_voxels'])} |"
        )
    with atomic_path(output / "results.md") as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if summary:  # nothing to draw before the first row
        plot_recovery(summary, output / "recovery.png")


def per_10k_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} points"


def plot_recovery(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({item["model"] for item in summary})
    figure, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        series = sorted(
            {(item["strategy"], item["fine_tuning"]) for item in summary if item["model"] == model}
        )
        for strategy, fine_tuning in series:
            points = sorted(
                (item["slices"], 100 * item["after"])
                for item in summary
                if (item["model"], item["strategy"], item["fine_tuning"]) == (model, strategy, fine_tuning)
            )
            axis.plot(*zip(*points, strict=True), marker="o", label=f"{strategy} ({fine_tuning})")
        reference = next(item for item in summary if item["model"] == model)
        axis.axhline(100 * reference["before"], color="green", linestyle="--", label="before the shift")
        axis.axhline(100 * reference["shifted"], color="red", linestyle=":", label="shifted, not adapted")
        axis.set(title=model, xlabel="corrected slices", ylabel="Dice (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["la-sassnet", "la-dan", "la-attention"])
    parser.add_argument("--strategies", nargs="+", default=["p-dsc-spread", "foreground-random"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 20], help="slices per volume")
    parser.add_argument("--volumes", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=FineTuneSettings.steps)
    parser.add_argument("--learning-rate", type=float, default=FineTuneSettings.learning_rate)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--batch-size", type=int, default=FineTuneSettings.batch_size)
    parser.add_argument("--patch-size", type=int, nargs=3, help="default: each model's own patch")
    parser.add_argument(
        "--intensity-augmentation",
        action=argparse.BooleanOptionalAction,
        default=FineTuneSettings.intensity_augmentation,
    )
    parser.add_argument(
        "--pseudo-labels",
        action=argparse.BooleanOptionalAction,
        default=FineTuneSettings.pseudo_label_confidence is not None,
    )
    parser.add_argument(
        "--batchnorm-batches",
        type=int,
        default=FineTuneSettings.batchnorm_statistics_batches,
        help="batches the BatchNorm statistics are re-estimated over after fine-tuning (0: not)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--report", action="store_true", help="only rewrite the report from rows.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = FineTuneSettings(
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        freeze_encoder=args.freeze_encoder,
        intensity_augmentation=args.intensity_augmentation,
        batchnorm_statistics_batches=args.batchnorm_batches,
        pseudo_label_confidence=FineTuneSettings.pseudo_label_confidence if args.pseudo_labels else None,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.output / "rows.csv")
    if not args.report:
        root = require_la2018()
        rows = run_grid(args, settings, load_cases(root), rows)
    write_report(args.output, rows, settings)
    print(f"wrote {args.output}")


def run_grid(args, settings: FineTuneSettings, cases: list[ShiftedCase], rows: list[dict[str, Any]]) -> list:
    done = {row_key(row) for row in rows}
    scored = cases[ADAPTATION:]
    print(machine_line(), flush=True)
    for model in args.models:
        card = find_model(model)
        label, batches = fine_tuning_label(card, settings), settings.batchnorm_statistics_batches
        before = mean_dice(card, [(case.original, case.original_label) for case in scored])
        shifted_dice = mean_dice(card, [(case.image, case.label) for case in scored])
        print(f"{model}: before the shift {100 * before:.1f}, shifted {100 * shifted_dice:.1f}", flush=True)
        for strategy in args.strategies:
            budgets = [min(case.label.shape[2] for case in cases)] if strategy == ALL_SLICES else args.budgets
            for budget in budgets:
                for volumes in args.volumes:
                    for repeat in range(args.repeats):
                        key = (model, label, str(batches), strategy, str(budget), str(volumes), str(repeat))
                        if key in done:
                            continue
                        with tempfile.TemporaryDirectory(prefix="site-adaptation-") as folder:
                            adapted, effort, minutes = adapt(
                                card,
                                cases[:volumes],
                                strategy,
                                budget,
                                1000 * repeat + 7,
                                settings,
                                Path(folder),
                            )
                            after = mean_dice(adapted, [(case.image, case.label) for case in scored])
                        row = dict(zip(KEY, key, strict=True))
                        row.update(
                            before=round(before, 5),
                            shifted=round(shifted_dice, 5),
                            after=round(after, 5),
                            recovered=round((after - shifted_dice) / max(before - shifted_dice, 1e-6), 4),
                            effort_voxels=effort,
                            minutes=round(minutes, 2),
                            machine=machine_line(),
                        )
                        print(row, flush=True)
                        rows.append(row)
                        write_rows(args.output / "rows.csv", rows)
    return rows


if __name__ == "__main__":
    main()
