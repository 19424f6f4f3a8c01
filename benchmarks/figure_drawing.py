"""What the figures of one evaluation cost to draw: the misclassified and correct grids, their Grad-CAM grids, the
confusion matrix and the per-class bars, each built and turned into PNG bytes, as a run does after every
validation (with --grid-every-n-epochs 1, the default) and after the test; and, apart (`gradcam_maps_seconds`),
what computing the Grad-CAM maps of those images costs on the full ResNet18 (maps of the predicted and the true
class; random weights, which cost the same as trained ones).

    python benchmarks/figure_drawing.py [--data-dir JPEG_FOLDER] [--images 30] [--repeats 5] [--label after]

The images are the first test images of an image folder (`--data-dir`, e.g. the JPEG copy of CIFAR-10), or smooth
synthetic ones; the maps drawn in the Grad-CAM grids are synthetic, so the drawing is timed apart from the network.
Each figure is timed --repeats times in this process and the median kept. It touches only what every version of the
figures has (the four figure functions and `figure_png`; the maps where `reporting.gradcam` exists), so it also runs
against older commits: from a checkout of the old commit, `PYTHONPATH=. python /path/to/figure_drawing.py --label
before`.

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


def gradcam_maps_seconds(images: np.ndarray, true: list[int], predicted: list[int], repeats: int) -> float | None:
    """Median seconds of `maps_for_predictions` (layer3) on the default ResNet18 for these images, on the CPU."""
    try:
        from cifar_lit.reporting.gradcam import DEFAULT_LAYER, maps_for_predictions
    except ImportError:  # a commit from before Grad-CAM
        return None
    import torch

    from cifar_lit.models.resnet import resnet18

    # channels_last, as a CPU run's network and batches are (the hardware plan's layout there)
    network = resnet18().eval().to(memory_format=torch.channels_last)
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        maps_for_predictions(network, inputs, torch.tensor(true), torch.tensor(predicted), layer=DEFAULT_LAYER)
        times.append(time.perf_counter() - start)
    seconds = round(statistics.median(times), 4)
    print(f"{'gradcam maps (ResNet18)':28s} {seconds * 1000:7.0f} ms", file=sys.stderr)
    return seconds


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
        "misclassified grid": lambda: plots.prediction_grid_figure(images, true, predicted, class_names=names,
                                                                   title="Misclassified"),
        "correct grid": lambda: plots.prediction_grid_figure(images, true, true, class_names=names, title="Correct"),
        "gradcam misclassified grid": lambda: plots.gradcam_grid_figure(
            images, maps, maps, true_labels=true, predicted_labels=predicted, confidences=[0.6] * args.images,
            class_names=names, title="Grad-CAM (layer3): misclassified"),
        "gradcam correct grid": lambda: plots.gradcam_grid_figure(
            images, maps, maps, true_labels=true, predicted_labels=true, confidences=[0.9] * args.images,
            class_names=names, title="Grad-CAM (layer3): correct"),
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
    maps_seconds = gradcam_maps_seconds(images, true, predicted, args.repeats)
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
        "gradcam_maps_seconds": maps_seconds,
    }
    path = write_record(args.out, "figure_drawing", record, args.label)
    print(f"{record['seconds_per_evaluation']:.2f} s per evaluation; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
