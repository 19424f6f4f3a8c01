"""Figures of a run: learning curves, captioned image grids, confusion matrix and per-class accuracy.

Built on matplotlib's object API (Figure + Agg canvas), never pyplot, so no global state or display is touched.
Colours come from the Okabe-Ito palette, readable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from cifar_lit.reliability.files import write_bytes_atomic

BLUE, ORANGE, GREEN, VERMILLION, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#555555"
SERIES_COLOURS = (BLUE, ORANGE, GREEN, VERMILLION, "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def spread_over_classes(labels: np.ndarray, chosen: np.ndarray, count: int, classes: int = 10,
                        already: np.ndarray | None = None, quota: int | None = None) -> np.ndarray:
    """Indices of up to `count` chosen items (boolean mask `chosen`), at most `quota` per class (default: an even
    share of `count`), so a grid of a class-sorted test set is not all airplanes. `already` holds per-class counts
    taken before and is updated."""
    quota = quota if quota is not None else -(-count // classes)
    taken = np.zeros(classes, dtype=int) if already is None else already
    picked = []
    for index in np.flatnonzero(chosen):
        label = labels[index]
        if taken[label] < quota and len(picked) < count:
            taken[label] += 1
            picked.append(index)
    return np.asarray(picked, dtype=int)


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """PNG bytes, cropped to what is drawn (no clipped axis labels, no wide margins)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def figure_to_array(figure: Figure) -> np.ndarray:
    """RGB uint8 (H, W, 3) rendering, e.g. for TensorBoard's add_image."""
    with Image.open(io.BytesIO(figure_png(figure))) as image:
        return np.asarray(image.convert("RGB"))


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a PNG through a temporary file, so a reader never sees half an image."""
    return write_bytes_atomic(path, figure_png(figure))


def epoch_axis(axis: Any, epochs: Sequence[float]) -> None:
    """Whole epochs on the x axis, with half an epoch of room either side."""
    axis.set_xlabel("epoch", fontsize=11)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def curves_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], ylabel: str, title: str, percent: bool = False
) -> Figure:
    """One axis of named (epochs, values) lines, e.g. train and val accuracy against epochs."""
    figure = new_figure(6.4, 4.0)
    axis = figure.add_subplot()
    for (name, (xs, ys)), colour in zip(series.items(), SERIES_COLOURS, strict=False):  # more colours than series
        values = [100.0 * y for y in ys] if percent else list(ys)
        axis.plot(list(xs), values, marker="o", markersize=3.5, linewidth=1.8, color=colour, label=name)
    epoch_axis(axis, [x for xs, _ in series.values() for x in xs])
    axis.set_ylabel(f"{ylabel} (%)" if percent else ylabel, fontsize=11)
    axis.set_title(title, fontsize=12)
    axis.grid(True, alpha=0.3)
    axis.tick_params(labelsize=10)
    if series:
        axis.legend(fontsize=10)
    return figure


def accuracy_and_loss_figure(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Accuracy and loss side by side from per-epoch history rows."""
    figure = new_figure(11.0, 4.0)
    panels = (("acc", "accuracy (%)", True), ("loss", "loss", False))
    for index, (key, label, percent) in enumerate(panels, start=1):
        axis = figure.add_subplot(1, 2, index)
        for stage, colour in (("train", BLUE), ("val", ORANGE)):
            points = [(row["epoch"], row[f"{stage}_{key}"]) for row in history if row.get(f"{stage}_{key}") is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ys = [100.0 * y for y in ys] if percent else ys
                axis.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.8, color=colour, label=stage)
        epoch_axis(axis, [row["epoch"] for row in history])
        axis.set_ylabel(label, fontsize=11)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=10)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


def prediction_grid_figure(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted_labels: Sequence[int],
    class_names: Sequence[str],
    title: str,
    columns: int = 8,
) -> Figure:
    """Images (N, H, W, 3) in [0, 1], each captioned "true" over "pred", enlarged without smoothing."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    figure = new_figure(1.45 * columns, 1.75 * rows + 0.5)
    figure.suptitle(title, fontsize=12)
    for index in range(rows * columns):
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(images[index], interpolation="nearest")
        true_name, pred_name = class_names[true_labels[index]], class_names[predicted_labels[index]]
        wrong = true_labels[index] != predicted_labels[index]
        axis.set_title(
            f"true: {true_name}\npred: {pred_name}", fontsize=9, color=VERMILLION if wrong else "black",
            fontweight="bold" if wrong else "normal",
        )
    if count == 0:
        figure.text(0.5, 0.5, "none", ha="center", va="center", fontsize=12, color=GREY)
    return figure


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], suggested: float | None, title: str,
                   lightning_suggested: float | None = None) -> Figure:
    """The LR range test: smoothed training loss against the learning rate on a log axis, the suggestion marked."""
    figure = new_figure(6.4, 4.2)
    axis = figure.add_subplot()
    axis.plot(lrs, losses, color=BLUE, linewidth=1.8, label="loss (smoothed)")
    axis.set_xscale("log")
    if suggested is not None:
        axis.axvline(suggested, color=VERMILLION, linestyle="--", linewidth=1.4,
                     label=f"suggested {suggested:.3g} (steepest in log LR)")
    if lightning_suggested is not None:
        axis.axvline(lightning_suggested, color=GREY, linestyle=":", linewidth=1.2,
                     label=f"Lightning's {lightning_suggested:.3g} (slope in linear LR)")
    finite = [loss for loss in losses if np.isfinite(loss)]
    if finite:
        low, high = min(finite), np.percentile(finite, 95)
        axis.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    axis.set_xlabel("learning rate (this run's global batch)", fontsize=11)
    axis.set_ylabel("training loss", fontsize=11)
    axis.set_title(title, fontsize=12)
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(fontsize=9)
    return figure


def augmentation_figure(stored: np.ndarray, augmented: np.ndarray, labels: Sequence[int],
                        class_names: Sequence[str], title: str) -> Figure:
    """Training images as stored (top row of each pair) over the same images as the network receives them (the
    augmented batch, de-normalized): (N, H, W, 3) arrays in [0, 1]."""
    count = len(stored)
    columns = max(1, min(8, count))
    pairs = max(1, -(-count // columns))
    figure = new_figure(1.3 * columns, 2.7 * pairs + 0.5)
    figure.suptitle(title, fontsize=12)
    for index in range(count):
        pair, column = divmod(index, columns)
        for offset, (pictures, caption) in enumerate(((stored, class_names[labels[index]]), (augmented, "augmented"))):
            axis = figure.add_subplot(2 * pairs, columns, (2 * pair + offset) * columns + column + 1)
            axis.axis("off")
            axis.imshow(pictures[index], interpolation="nearest")
            axis.set_title(caption, fontsize=8, color=GREY if offset else "black")
    return figure


def gradcam_grid_figure(
    images: np.ndarray,
    maps_predicted: np.ndarray,
    maps_true: np.ndarray,
    true_labels: Sequence[int],
    predicted_labels: Sequence[int],
    confidences: Sequence[float],
    class_names: Sequence[str],
    title: str,
    opacity: float = 0.5,
) -> Figure:
    """Each image with its class-activation map laid over it, captioned "true / pred (confidence)"; where the
    prediction is wrong, the map for the true class stands beside the one for the predicted class."""
    count = len(images)
    wrong = [true != pred for true, pred in zip(true_labels, predicted_labels, strict=True)]
    panels = 2 if any(wrong) else 1
    per_row = max(1, min(8 // panels, count))
    rows = max(1, -(-count // per_row))
    figure = new_figure(1.45 * per_row * panels, 1.85 * rows + 0.6)
    figure.suptitle(title, fontsize=12)
    grid = figure.add_gridspec(rows, per_row * panels)
    for index in range(count):
        row, column = divmod(index, per_row)
        true_name, pred_name = class_names[true_labels[index]], class_names[predicted_labels[index]]
        views = [(maps_predicted[index], f"pred: {pred_name} {confidences[index]:.0%}")]
        if panels == 2:
            views.append((maps_true[index], f"map of true: {true_name}") if wrong[index] else (None, ""))
        for offset, (heat, caption) in enumerate(views):
            axis = figure.add_subplot(grid[row, column * panels + offset])
            axis.axis("off")
            if heat is None:
                continue
            axis.imshow(images[index], interpolation="nearest")
            axis.imshow(heat, cmap="inferno", alpha=opacity, vmin=0.0, vmax=1.0, interpolation="bilinear")
            heading = f"true: {true_name}\n{caption}" if offset == 0 else caption
            axis.set_title(heading, fontsize=8, color=VERMILLION if wrong[index] and offset == 0 else "black")
    if count == 0:
        figure.text(0.5, 0.5, "none", ha="center", va="center", fontsize=12, color=GREY)
    return figure


NUMBERED_CELLS_UP_TO = 20  # classes; above it the confusion matrix is a heat map and per-class bars are sorted
CLASS_ROW_INCHES = 0.13  # per class above that: 9.4 points, room for a 6-point label
LABEL_POINTS = 6


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Shares of each true class (rows) predicted as each class (columns); with up to 20 classes every cell shows
    its count, with more a heat map whose size and labels grow with the class count so none overlap."""
    matrix = np.asarray(matrix)
    classes = len(class_names)
    numbered = classes <= NUMBERED_CELLS_UP_TO
    side = 6.4 if numbered else max(6.4, CLASS_ROW_INCHES * classes + 2.0)
    label_size = 9 if numbered else LABEL_POINTS
    figure = new_figure(side + 0.8, side)
    axis = figure.add_subplot()
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    shares = matrix / row_sums
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(classes)
    axis.set_xticks(ticks, class_names, rotation=90 if not numbered else 45, ha="center" if not numbered else "right",
                    fontsize=label_size)
    axis.set_yticks(ticks, class_names, fontsize=label_size)
    axis.set_xlabel("predicted class", fontsize=11)
    axis.set_ylabel("true class", fontsize=11)
    axis.set_title(title, fontsize=12)
    if numbered:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(int(count)), ha="center", va="center", fontsize=7.5,
                      color="white" if shares[row, column] > 0.5 else "black")
    return figure


def per_class_accuracy_figure(accuracies: Sequence[float], class_names: Sequence[str], title: str) -> Figure:
    """Horizontal bars of accuracy per class, labelled with the value, overall mean marked. With many classes the
    bars are sorted, worst first, and the worst ones are named in the title."""
    values = 100.0 * np.asarray(accuracies, dtype=float)
    names = list(class_names)
    classes = len(names)
    many = classes > NUMBERED_CELLS_UP_TO
    if many:
        order = np.argsort(values, kind="stable")
        values, names = values[order], [names[i] for i in order]
        title = f"{title}\nhardest: " + ", ".join(f"{name} {value:.0f}%" for name, value in zip(names[:3], values[:3],
                                                                                                 strict=False))
    label_size = 10 if not many else LABEL_POINTS
    figure = new_figure(6.4, 4.4 if not many else max(4.4, CLASS_ROW_INCHES * classes + 1.2))
    axis = figure.add_subplot()
    positions = np.arange(classes)
    axis.barh(positions, values, color=BLUE)
    axis.set_yticks(positions, names, fontsize=label_size)
    axis.set_ylim(classes - 0.5, -0.5)  # first class on top, no empty rows
    axis.set_xlim(0, 105)
    axis.set_xlabel("accuracy (%)", fontsize=11)
    axis.set_title(title, fontsize=12)
    if not many:
        for position, value in zip(positions, values, strict=True):
            axis.text(min(value + 1.0, 96.0), position, f"{value:.1f}", va="center", fontsize=9)
    axis.axvline(values.mean(), color=VERMILLION, linestyle="--", linewidth=1.2, label=f"mean {values.mean():.1f}")
    axis.legend(fontsize=9, loc="lower right")
    axis.grid(True, axis="x", alpha=0.3)
    return figure
