"""What the figures of one evaluation cost to draw: the misclassified and correct grids, their Grad-CAM grids, the
confusion matrix and the per-class bars, each built and turned into PNG bytes, as a run does after every
validation (with --grid-every-n-epochs 1, the default) and after the test.

    python benchmarks/figure_drawing.py [--data-dir JPEG_FOLDER] [--images 30] [--repeats 5] [--label after]

The images are the first test images of an image folder (`--data-dir`, e.g. the JPEG copy of CIFAR-10), or smooth
synthetic ones; the Grad-CAM maps are synthetic (the network's cost is not what is measured here). Each figure is
timed --repeats times in this process and the median kept. It touches only what every version of the figures has
(the four figure functions and `figure_png`), so it also runs against older commits: from a checkout of the old
commit, `PYTHONPATH=. python /path/to/figure_drawing.py --label before`.

Writes benchmarks/results/figure_drawing-<device>-<label>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_lit.data.constants import CIFAR10_CLASSES
from cifar_lit.reporting import plots
from cifar_lit.reporting.provenance import command_line, device_description, git_commit, versions, write_record


def test_images(data_dir: str | None, count: int) -> tuple[np.ndarray, list[int]]:
    """`count` images (N, 32, 32, 3) in [0, 1] spread over the ten classes, with their labels."""
    if data_dir is None:
        ys, xs = np.mgrid[0:32, 0:32] / 31.0
        images = [np.stack([xs * (i % 3) / 2, ys, np.full_like(xs, i / count)], axis=-1) for i in range(count)]
        return np.asarray(images, dtype=np.float32), [i % 10 for i in range(count)]
    images, labels = [], []
    for index in range(count):
        label = index % 10
        files = sorted((Path(data_dir) / "test" / CIFAR10_CLASSES[label]).iterdir())
        with Image.open(files[index // 10]) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        labels.append(label)
    return np.asarray(images), labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    names = list(CIFAR10_CLASSES)
    images, true = test_images(args.data_dir, args.images)
    predicted = [(label + 3) % 10 for label in true]  # all wrong: the misclassified grid, with its true-class maps
    rng = np.random.default_rng(0)
    maps = rng.random((args.images, 32, 32)).astype(np.float32)
    matrix = rng.integers(0, 40, (10, 10)) + np.diag(rng.integers(500, 900, 10))
    figures = {
        "misclassified grid": lambda: plots.prediction_grid_figure(images, true, predicted, names, "Misclassified"),
        "correct grid": lambda: plots.prediction_grid_figure(images, true, true, names, "Correct"),
        "gradcam misclassified grid": lambda: plots.gradcam_grid_figure(
            images, maps, maps, true, predicted, [0.6] * args.images, names, "Grad-CAM (layer3): misclassified"),
        "gradcam correct grid": lambda: plots.gradcam_grid_figure(
            images, maps, maps, true, true, [0.9] * args.images, names, "Grad-CAM (layer3): correct"),
        "confusion matrix": lambda: plots.confusion_matrix_figure(matrix, names, "Confusion matrix, test set"),
        "per-class accuracy": lambda: plots.per_class_accuracy_figure(rng.random(10), names, "Accuracy per class"),
    }
    seconds, png_kb = {}, {}
    for name, make in figures.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            png = plots.figure_png(make())
            times.append(time.perf_counter() - start)
        seconds[name], png_kb[name] = round(statistics.median(times), 4), round(len(png) / 1024, 1)
        print(f"{name:28s} {seconds[name] * 1000:7.0f} ms  {png_kb[name]:7.1f} KB", file=sys.stderr)
    record = {
        "benchmark": "figure_drawing",
        "what": "seconds to build one evaluation's figures and encode them as PNG (median of repeats, one process)",
        "device": device_description(),
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "git_commit": git_commit(),
        "versions": versions(),
        "images": args.images,
        "data": args.data_dir or "synthetic gradients",
        "repeats": args.repeats,
        "seconds": seconds,
        "seconds_per_evaluation": round(sum(seconds.values()), 3),
        "png_kb": png_kb,
    }
    path = write_record(args.out, "figure_drawing", record, args.label)
    print(f"{record['seconds_per_evaluation']:.2f} s per evaluation; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
