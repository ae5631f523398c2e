"""PNG figures for people who would rather look than read: overlays, training and
active-learning curves, reliability diagrams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asdseg.evaluation.calibration import ReliabilityBins
from asdseg.io.atomic_write import atomic_path
from asdseg.io.labels import Label


def _save_png(figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically and release it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path


def save_overlay_png(
    image: np.ndarray,
    label_map: np.ndarray,
    labels: Sequence[Label],
    path: str | Path,
    extra_map: np.ndarray | None = None,
    extra_title: str = "",
    reference: np.ndarray | None = None,
    extra_range: tuple[float, float] | None = None,
) -> Path:
    """Axial slice through the labelled region's centre: the image with label outlines (and the
    reference's dashed outlines), and beside it ``extra_map`` (SDM or confidence) if given, on
    the colour scale ``extra_range`` (the map's full range, such as 0-1 for a confidence, so that
    a narrow spread of values does not look like strong contrast), else its own min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    foreground = np.argwhere(label_map > 0)
    z = int(np.median(foreground[:, 2])) if foreground.size else image.shape[2] // 2
    panels = 2 if extra_map is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    axes[0, 0].imshow(image[:, :, z].T, cmap="gray", origin="lower")
    for label in labels:
        if label.value == 0:
            continue
        color = np.asarray(label.color) / 255.0
        if (label_map[:, :, z] == label.value).any():
            axes[0, 0].contour((label_map[:, :, z] == label.value).T, levels=[0.5], colors=[color])
        if reference is not None and (reference[:, :, z] == label.value).any():
            axes[0, 0].contour(
                (reference[:, :, z] == label.value).T, levels=[0.5], colors=[color], linestyles="dashed"
            )
    axes[0, 0].set_title(
        f"axial slice {z}: prediction" + (" (solid) vs reference (dashed)" if reference is not None else "")
    )
    if extra_map is not None:
        low, high = extra_range or (None, None)
        shown = axes[0, 1].imshow(extra_map[:, :, z].T, cmap="coolwarm", origin="lower", vmin=low, vmax=high)
        axes[0, 1].set_title(extra_title)
        figure.colorbar(shown, ax=axes[0, 1], fraction=0.046)
    for axis in axes.ravel():
        axis.set_axis_off()
    return _save_png(figure, path)


def save_training_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Training losses per step (left) and validation Dice (right) from a run's log rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses_axis, dice_axis) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [row["step"] for row in history]
    not_losses = ("step", "learning_rate", "validation_dice", "step_seconds")
    names = [key for key in history[-1] if key not in not_losses] if history else []
    for name in names:
        values = [row.get(name, np.nan) for row in history]
        losses_axis.plot(steps, values, label=name, linewidth=1)
    losses_axis.set_xlabel("step")
    losses_axis.set_title("training losses")
    losses_axis.set_yscale("log")
    if names:
        losses_axis.legend(fontsize=8)
    validated = [row for row in history if "validation_dice" in row]
    dice_axis.plot([row["step"] for row in validated], [row["validation_dice"] for row in validated], "o-")
    dice_axis.set_xlabel("step")
    dice_axis.set_ylim(0, 1)
    dice_axis.set_title("validation Dice (mean over cases and organs)")
    return _save_png(figure, path)


def save_active_learning_curves(
    points: Sequence[dict[str, float | str]], full_annotation_dice: float | None, path: str | Path
) -> Path:
    """Validation Dice against the fraction of slices labelled, one curve per query strategy
    (the mean over repeats, with their range shaded where ``points`` carry ``dice_min`` and
    ``dice_max``), with full-annotation Dice (and 1 point below it) as horizontal lines; a hollow
    marker shows the first round where a repeat's stop criterion fired (``stops`` > 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    strategies = list(dict.fromkeys(point["strategy"] for point in points))
    for index, strategy in enumerate(strategies):
        own = [point for point in points if point["strategy"] == strategy]
        fractions = [100 * point["labelled_fraction"] for point in own]
        # Distinct markers and shrinking sizes keep curves that coincide (P-DSC and P-accuracy
        # rank alike for a single organ) visible on top of each other.
        style = {"marker": "osD^v<"[index % 6], "markersize": 8 - index, "linewidth": 2.2 - 0.25 * index}
        line = axis.plot(fractions, [100 * point["dice"] for point in own], label=strategy, **style)[0]
        if all("dice_min" in point for point in own):
            axis.fill_between(
                fractions,
                [100 * point["dice_min"] for point in own],
                [100 * point["dice_max"] for point in own],
                color=line.get_color(),
                alpha=0.15,
            )
        stops = [point for point in own if point.get("stops")]
        if stops:
            axis.plot(
                100 * stops[0]["labelled_fraction"],
                100 * stops[0]["dice"],
                "o",
                markersize=13,
                markerfacecolor="none",
                color=line.get_color(),
            )
    if full_annotation_dice is not None:
        axis.axhline(100 * full_annotation_dice, color="black", linewidth=1, label="full annotation (final)")
        axis.axhline(
            100 * full_annotation_dice - 1, color="black", linewidth=1, linestyle=":", label="full - 1 point"
        )
    axis.set_xlabel("slices labelled by the query strategies (%)")
    axis.set_ylabel("held-out Dice (%)")
    axis.set_title("active learning: Dice vs. labelling effort (shaded: range over repeats; circle: stop)")
    axis.legend(fontsize=8)
    return _save_png(figure, path)


def save_reliability_diagram(curves: dict[str, ReliabilityBins], path: str | Path, title: str) -> Path:
    """Accuracy against mean confidence per bin, one curve per named confidence map, beside the
    diagonal a calibrated map would follow; a lower panel shows how the voxels spread over the
    bins (log scale), since a few heavily populated bins dominate the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axis, count_axis) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curve_axis.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle=":", label="calibrated")
    for index, (name, bins) in enumerate(curves.items()):
        filled = bins.counts > 0
        ece = bins.expected_calibration_error()
        line = curve_axis.plot(
            bins.mean_confidence[filled],
            bins.accuracy[filled],
            marker="os^D"[index % 4],
            label=f"{name} (ECE {100 * ece:.2f} %)",
        )[0]
        centres = (np.arange(bins.bins) + 0.5) / bins.bins
        count_axis.step(centres, np.maximum(bins.counts, 1), where="mid", color=line.get_color())
    curve_axis.set_xlim(0, 1)
    curve_axis.set_ylim(0, 1)
    curve_axis.set_ylabel("fraction of voxels segmented correctly")
    curve_axis.set_title(title)
    curve_axis.legend(fontsize=7, loc="lower right")
    count_axis.set_yscale("log")
    count_axis.set_xlabel("confidence")
    count_axis.set_ylabel("voxels per bin")
    return _save_png(figure, path)
