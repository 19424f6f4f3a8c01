"""The figures as a reader sees them: every label inside the picture, captions on the right cells, pixels where
the grid says they are."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cifar_lit.reporting import plots

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RNG = np.random.default_rng(0)
IMAGES = RNG.random((12, 32, 32, 3)).astype(np.float32)
TRUE = [index % 10 for index in range(12)]
PREDICTED = [3 if index in (1, 4) else label for index, label in enumerate(TRUE)]  # two mistakes
MAPS = RNG.random((12, 32, 32)).astype(np.float32)
HISTORY = [{"epoch": e, "train_acc": 0.1 * e, "val_acc": 0.09 * e, "train_loss": 2 - 0.1 * e, "val_loss": 2.1 - 0.1 * e}
           for e in range(1, 6)]

FIGURES = {
    "curves": lambda: plots.curves_figure({"run a": ([1, 2, 3], [0.3, 0.5, 0.6])}, "validation accuracy",
                                          "Validation accuracy per epoch", percent=True),
    "accuracy and loss": lambda: plots.accuracy_and_loss_figure(HISTORY, "Training run version_0"),
    "confusion, 10 classes": lambda: plots.confusion_matrix_figure(RNG.integers(0, 50, (10, 10)), NAMES,
                                                                   "Confusion matrix, test set (best checkpoint)"),
    "confusion, 100 classes": lambda: plots.confusion_matrix_figure(
        RNG.integers(0, 9, (100, 100)), [f"class_{i:02d}" for i in range(100)], "Confusion matrix, 100 classes"),
    "per class": lambda: plots.per_class_accuracy_figure(RNG.random(10), NAMES, "Accuracy per class, test set"),
    "lr range test": lambda: plots.lr_find_figure(np.logspace(-5, 0, 50), np.linspace(2.3, 1.0, 50), 1e-2, title="LR",
                                                  lightning_suggested=2e-3, raw_losses=np.linspace(2.4, 0.9, 50),
                                                  guessing_loss=2.3),
    "prediction grid": lambda: plots.prediction_grid_figure(IMAGES, TRUE, PREDICTED, class_names=NAMES,
                                                            title="Misclassified images"),
    "empty grid": lambda: plots.prediction_grid_figure(IMAGES[:0], [], [], class_names=NAMES,
                                                       title="Misclassified test images (0 shown), best checkpoint"),
    "grad-cam grid": lambda: plots.gradcam_grid_figure(IMAGES, MAPS, MAPS, true_labels=TRUE,
                                                       predicted_labels=PREDICTED, confidences=[0.5] * 12,
                                                       class_names=NAMES,
                                                       title="Grad-CAM (layer3): misclassified images"),
    "augmentation": lambda: plots.augmentation_figure(IMAGES[:11], IMAGES[:11], TRUE[:11], class_names=NAMES,
                                                      title="As stored"),
}


@pytest.mark.parametrize("make", FIGURES.values(), ids=FIGURES.keys())
def test_every_label_lies_inside_the_picture(make):
    """The figures are drawn once at their own size (no cropping pass), so the layout must keep all text inside."""
    figure = make()
    pixels = plots.render(figure)
    height, width = pixels.shape[:2]
    drawn = figure.get_tightbbox(figure.canvas.get_renderer())  # inches: what savefig's cropping would keep
    assert drawn.x0 >= 0 and drawn.y0 >= 0, drawn
    assert drawn.x1 <= width / figure.dpi + 1e-6 and drawn.y1 <= height / figure.dpi + 1e-6, (drawn, width, height)
    with Image.open(io.BytesIO(plots.png_bytes(pixels))) as png:
        assert png.size == (width, height)


def test_a_grid_shows_each_image_crisply_where_its_caption_says():
    figure = plots.prediction_grid_figure(IMAGES, TRUE, PREDICTED, class_names=NAMES, title="Misclassified images",
                                          columns=8)
    pixels = plots.render(figure).astype(int)
    axis = figure.axes[0]
    captions = [text for text in axis.texts if text.get_text().startswith("true:")]
    assert [text.get_text() for text in captions] == [f"true: {NAMES[t]}\npred: {NAMES[p]}"
                                                      for t, p in zip(TRUE, PREDICTED, strict=True)]
    assert [text.get_color() for text in captions].count(plots.VERMILLION) == 2  # the two mistakes, and only they
    assert captions[1].get_color() == plots.VERMILLION and captions[1].get_fontweight() == "bold"
    assert captions[0].get_color() == "black"
    # image 9 sits in row 2, column 2: its top-left image pixel is a GRID_SCALE-square block of that pixel's colour
    x, y = captions[9].get_position()
    left, top = round(x - 16 * plots.GRID_SCALE), round(y + 4)
    block = pixels[top:top + plots.GRID_SCALE, left:left + plots.GRID_SCALE]
    expected = np.rint(IMAGES[9, 0, 0] * 255)
    assert np.abs(block - expected).max() <= 1
    assert np.abs(pixels[top + 31 * plots.GRID_SCALE, left + 31 * plots.GRID_SCALE]
                  - np.rint(IMAGES[9, 31, 31] * 255)).max() <= 1


def test_a_grad_cam_cell_is_the_image_blended_with_its_map():
    image, heat = np.zeros((32, 32, 3), np.float32), np.ones((32, 32), np.float32)
    cell = plots.overlay(image, heat, opacity=0.5)
    assert cell.shape == (32 * plots.GRID_SCALE, 32 * plots.GRID_SCALE, 3)
    hottest = np.asarray(plots.GRADCAM_COLOURS(1.0)[:3])
    np.testing.assert_allclose(cell[0, 0], 0.5 * hottest, atol=1e-6)
    np.testing.assert_allclose(plots.overlay(IMAGES[0], heat, opacity=0.0)[:5, :5], np.broadcast_to(
        IMAGES[0, 0, 0], (5, 5, 3)), atol=1e-6)


def test_wrong_predictions_get_the_true_class_map_beside_them():
    figure = plots.gradcam_grid_figure(IMAGES, MAPS, MAPS, true_labels=TRUE, predicted_labels=PREDICTED,
                                       confidences=[0.5] * 12, class_names=NAMES, title="Grad-CAM")
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts.count("map of true: automobile") == 1 and texts.count("map of true: deer") == 1
    assert len([text for text in texts if text.startswith("true:")]) == 12


def test_each_augmented_image_sits_under_the_same_image_as_stored():
    figure = plots.augmentation_figure(IMAGES[:11], IMAGES[:11], TRUE[:11], class_names=NAMES, title="As stored",
                                       columns=8)
    texts = [text for text in figure.axes[0].texts if text.get_text() != "As stored"]
    stored = [text for text in texts if text.get_text() != "augmented"]
    augmented = [text for text in texts if text.get_text() == "augmented"]
    assert [text.get_text() for text in stored] == [NAMES[label] for label in TRUE[:11]]
    assert len(augmented) == 11
    for above, below in zip(stored, augmented, strict=True):
        (x_above, y_above), (x_below, y_below) = above.get_position(), below.get_position()
        assert x_above == x_below and y_below > y_above  # same column, lower on the page (y grows downwards)
    narrow = plots.augmentation_figure(IMAGES[:3], IMAGES[:3], TRUE[:3], class_names=NAMES, title="Three")
    assert narrow.get_size_inches()[0] < figure.get_size_inches()[0], "three images make a narrower picture"


def test_a_figure_is_drawn_once_for_every_logger_and_its_png_and_not_at_all_for_nobody(tmp_path, monkeypatch):
    draws, received = [], []
    real_render = plots.render
    monkeypatch.setattr(plots, "render", lambda figure: draws.append(figure) or real_render(figure))
    sinks = [lambda tag, pixels, step, logger=logger: received.append((logger, tag, pixels, step))
             for logger in ("tensorboard", "mlflow")]
    figure = FIGURES["per class"]()
    plots.publish_figure(sinks, "test/per_class_accuracy", 7, figure, path=tmp_path / "per_class_accuracy.png")
    assert len(draws) == 1, "drawn once, whatever the loggers"
    assert [(logger, tag, step) for logger, tag, _, step in received] == [
        ("tensorboard", "test/per_class_accuracy", 7), ("mlflow", "test/per_class_accuracy", 7)]
    pixels = received[0][2]
    assert pixels.dtype == np.uint8 and pixels is received[1][2]
    with Image.open(tmp_path / "per_class_accuracy.png") as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), pixels)
    plots.publish_figure([], "val/per_class_accuracy", 8, FIGURES["per class"]())
    assert len(draws) == 1
