"""Figures of a run: learning curves, captioned image grids, confusion matrix and per-class accuracy.

Built on matplotlib's object API (Figure + Agg canvas), never pyplot, so no global state or display is touched.
Colours come from the Okabe-Ito palette, readable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator
from PIL import Image

from cifar_lit.reliability.files import write_bytes_atomic

BLUE, ORANGE, GREEN, VERMILLION, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#555555"
SERIES_COLOURS = (BLUE, ORANGE, GREEN, VERMILLION, "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def spread_over_classes(labels: np.ndarray, chosen: np.ndarray, count: int, *, classes: int = 10,
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


DPI = 110


def new_figure(width: float, height: float, layout: str = "constrained") -> Figure:
    """A figure whose layout engine keeps every label inside it ("compressed" for fixed-aspect axes such as a
    matrix, where "constrained" leaves the y label outside)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def render(figure: Figure) -> np.ndarray:
    """RGB uint8 (H, W, 3), drawn once at the figure's own size: its layout engine keeps every label inside, so no
    second, cropping draw (savefig's bbox_inches="tight") is needed."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(figure: Figure) -> bytes:
    return png_bytes(render(figure))


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a PNG through a temporary file, so a reader never sees half an image."""
    return write_bytes_atomic(path, figure_png(figure))


def publish_figure(sinks: Sequence[Callable[[str, np.ndarray, int], None]], tag: str, step: int, figure: Figure, *,
                   path: Path | None = None) -> None:
    """Draw a figure once for the loggers' image `tag` (`sinks`: reporting/loggers.py's `image_sinks`) and for a PNG
    at `path` (if given); with neither, not at all."""
    if not sinks and path is None:
        return
    pixels = render(figure)
    for sink in sinks:
        sink(tag, pixels, step)
    if path is not None:
        write_bytes_atomic(path, png_bytes(pixels))


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


class Caption(NamedTuple):
    """The text above one cell of a captioned grid."""

    text: str
    colour: str = "black"
    bold: bool = False
    points: float = 9.0


GRID_SCALE = 5  # screen pixels per image pixel: a 32x32 image is 160 px (1.45 in at 110 dpi), crisp (nearest)
GRID_GAP = 16  # px between cells
LINE_SPACING = 1.2  # caption lines, in font sizes
TITLE_BAND = 40  # px above the first row, for the title
TITLE_POINTS = 12


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """An (H, W, 3) image in [0, 1], clipped and enlarged `scale` times without smoothing (each pixel a square)."""
    return np.repeat(np.repeat(np.clip(image, 0.0, 1.0), scale, axis=0), scale, axis=1)


class Pixels(Artist):
    """An RGBA uint8 array drawn at the figure's own pixels, under everything else, as it is: imshow and figimage
    resample and colour-map it on every draw (about half of a 30-image grid's time)."""

    def __init__(self, rgba: np.ndarray) -> None:
        super().__init__()
        self.rgba = rgba
        self.set_zorder(-1)

    def draw(self, renderer: Any) -> None:
        context = renderer.new_gc()
        renderer.draw_image(context, 0, 0, self.rgba[::-1])  # the renderer counts rows from the bottom
        context.restore()


def captioned_grid_figure(cells: Sequence[np.ndarray | None], captions: Sequence[Caption], columns: int, *, title: str,
                          scale: int = GRID_SCALE) -> Figure:
    """Equal-sized (H, W, 3) cells in [0, 1] (None: left blank) in rows of `columns`, each under its caption,
    enlarged `scale` times without smoothing. All cells are one image at the figure's own pixels, with no layout
    engine: a subplot per cell, each laid out and resampled, drew a 30-image grid 6x slower (1.61 s against 0.27 s,
    benchmarks/results/figure_drawing-*-2026-12-02.json), and that one image through imshow took 0.27 s against
    0.14 s as `Pixels` (with its PNG; figure_drawing-*-2026-12-07.json)."""
    shown = [cell for cell in cells if cell is not None]
    height, width = (shown[0].shape[0] * scale, shown[0].shape[1] * scale) if shown else (32 * scale, 32 * scale)
    columns = max(1, min(columns, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    points_per_pixel = 72 / DPI
    band = max((c.points * LINE_SPACING * (c.text.count("\n") + 1) / points_per_pixel for c in captions if c.text),
               default=0.0)
    band = int(np.ceil(band)) + (6 if band else 0)
    row_height = band + height + GRID_GAP
    figure = Figure(dpi=DPI)
    title_width, _, _ = FigureCanvasAgg(figure).get_renderer().get_text_width_height_descent(
        title, FontProperties(size=TITLE_POINTS), ismath=False)
    total_width = max(GRID_GAP + columns * (width + GRID_GAP), int(np.ceil(title_width)) + 2 * GRID_GAP)
    total_height = TITLE_BAND + rows * row_height
    figure.set_size_inches(total_width / DPI, total_height / DPI)
    canvas = np.full((total_height, total_width, 4), 255, dtype=np.uint8)  # RGBA uint8: drawn as it is
    origins = []
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        left, top = GRID_GAP + column * (width + GRID_GAP), TITLE_BAND + row * row_height + band
        origins.append((left, top))
        if cell is not None:
            canvas[top:top + height, left:left + width, :3] = np.rint(enlarge(cell, scale) * 255)
    figure.add_artist(Pixels(canvas))
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0))  # the captions' coordinates: pixels from the top left
    axis.axis("off")
    axis.set_xlim(0, total_width)
    axis.set_ylim(total_height, 0)
    axis.text(total_width / 2, 10, title, ha="center", va="top", fontsize=TITLE_POINTS)
    for (left, top), caption in zip(origins, captions, strict=True):
        if caption.text:
            axis.text(left + width / 2, top - 4, caption.text, ha="center", va="bottom", fontsize=caption.points,
                      color=caption.colour, fontweight="bold" if caption.bold else "normal",
                      linespacing=LINE_SPACING)
    if not shown:
        axis.text(total_width / 2, TITLE_BAND + row_height / 2, "none", ha="center", va="center", fontsize=TITLE_POINTS,
                  color=GREY)
    return figure


def prediction_grid_figure(
    images: np.ndarray,
    true_labels: Sequence[int],
    predicted_labels: Sequence[int],
    *, class_names: Sequence[str],
    title: str,
    columns: int = 8,
) -> Figure:
    """Images (N, H, W, 3) in [0, 1], each captioned "true" over "pred" (a wrong prediction in bold vermillion)."""
    captions = []
    for true, predicted in zip(true_labels, predicted_labels, strict=True):
        wrong = true != predicted
        captions.append(Caption(f"true: {class_names[true]}\npred: {class_names[predicted]}",
                                VERMILLION if wrong else "black", bold=wrong))
    return captioned_grid_figure(list(images), captions, columns, title=title)


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], suggested: float | None, *, title: str,
                   lightning_suggested: float | None = None, raw_losses: Sequence[float] | None = None,
                   guessing_loss: float | None = None) -> Figure:
    """The LR range test: the training loss of each step (faint) and its smoothed curve against the learning rate
    on a log axis, the suggestion marked, and the loss of guessing for reference."""
    figure = new_figure(6.4, 4.2)
    axis = figure.add_subplot()
    if raw_losses is not None:
        axis.plot(lrs, raw_losses, color=BLUE, alpha=0.25, linewidth=0.8, label="loss of each step")
    axis.plot(lrs, losses, color=BLUE, linewidth=1.8, label="loss (smoothed)")
    axis.set_xscale("log")
    if guessing_loss is not None:
        axis.axhline(guessing_loss, color=GREY, linestyle="-.", linewidth=1.0,
                     label=f"guessing the class frequencies ({guessing_loss:.2f})")
    if suggested is not None:
        axis.axvline(suggested, color=VERMILLION, linestyle="--", linewidth=1.4,
                     label=f"suggested {suggested:.3g} (steepest in log LR)")
    if lightning_suggested is not None:
        axis.axvline(lightning_suggested, color=GREY, linestyle=":", linewidth=1.2,
                     label=f"Lightning's {lightning_suggested:.3g} (slope in linear LR)")
    finite = [loss for loss in losses if np.isfinite(loss)]
    if finite:
        low, high = min(finite), np.percentile(finite, 95)
        if guessing_loss is not None:
            low, high = min(low, guessing_loss), max(high, guessing_loss)
        axis.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    axis.set_xlabel("learning rate (this run's global batch)", fontsize=11)
    axis.set_ylabel("training loss", fontsize=11)
    axis.set_title(title, fontsize=12)
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(fontsize=8)
    return figure


def augmentation_figure(stored: np.ndarray, augmented: np.ndarray, labels: Sequence[int],
                        *, class_names: Sequence[str], title: str, columns: int = 8) -> Figure:
    """Training images as stored (top row of each pair) over the same images as the network receives them (the
    augmented batch, de-normalized): (N, H, W, 3) arrays in [0, 1]."""
    columns = max(1, min(columns, len(stored)))
    cells: list[np.ndarray | None] = []
    captions: list[Caption] = []
    for start in range(0, len(stored), columns):
        indices = range(start, min(start + columns, len(stored)))
        blanks = columns - len(indices)
        cells += [stored[i] for i in indices] + [None] * blanks + [augmented[i] for i in indices] + [None] * blanks
        captions += [Caption(class_names[labels[i]], points=8) for i in indices] + [Caption("")] * blanks
        captions += [Caption("augmented", GREY, points=8) for _ in indices] + [Caption("")] * blanks
    return captioned_grid_figure(cells, captions, columns, title=title)


GRADCAM_COLOURS = colormaps["inferno"]


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float, scale: int = GRID_SCALE) -> np.ndarray:
    """An (H, W, 3) image enlarged `scale` times without smoothing, under its (H, W) map in [0, 1] enlarged
    bilinearly and coloured with inferno, blended with `opacity` (what imshow with alpha draws)."""
    height, width = image.shape[:2]
    sharp = enlarge(image, scale)
    smooth = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize(
        (width * scale, height * scale), Image.Resampling.BILINEAR)
    colours = GRADCAM_COLOURS(np.clip(np.asarray(smooth), 0.0, 1.0))[..., :3]
    return ((1.0 - opacity) * sharp + opacity * colours).astype(np.float32)


def gradcam_grid_figure(
    images: np.ndarray,
    maps_predicted: np.ndarray,
    maps_true: np.ndarray,
    *, true_labels: Sequence[int],
    predicted_labels: Sequence[int],
    confidences: Sequence[float],
    class_names: Sequence[str],
    title: str,
    opacity: float = 0.5,
) -> Figure:
    """Each image with its class-activation map laid over it, captioned "true / pred (confidence)"; where the
    prediction is wrong, the map for the true class stands beside the one for the predicted class."""
    wrong = [true != pred for true, pred in zip(true_labels, predicted_labels, strict=True)]
    panels = 2 if any(wrong) else 1
    per_row = max(1, min(8 // panels, len(images)))
    cells: list[np.ndarray | None] = []
    captions: list[Caption] = []
    for index, image in enumerate(images):
        true_name, pred_name = class_names[true_labels[index]], class_names[predicted_labels[index]]
        colour = VERMILLION if wrong[index] else "black"
        cells.append(overlay(image, maps_predicted[index], opacity))
        captions.append(Caption(f"true: {true_name}\npred: {pred_name} {confidences[index]:.0%}", colour, points=8))
        if panels == 2:
            cells.append(overlay(image, maps_true[index], opacity) if wrong[index] else None)
            captions.append(Caption(f"map of true: {true_name}", points=8) if wrong[index] else Caption(""))
    return captioned_grid_figure(cells, captions, per_row * panels, title=title, scale=1)


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
    figure = new_figure(side + 0.8, side, layout="compressed")
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
