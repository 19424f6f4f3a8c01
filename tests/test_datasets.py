"""Data sets other than CIFAR-10: CIFAR-100 (fine and coarse labels) and an image folder with its own classes, end to
end on the CPU with small synthetic copies; the class list follows into figures, summary, checkpoint and evaluate.py.

The synthetic CIFAR-100 files cannot match the published MD5 sums, so the runs pass --no-verify-checksums; that the
check itself runs and refuses them is tested separately (`test_a_cifar100_copy_that_fails_its_md5_is_refused`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GRIDS, TINY_FLAGS
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from synthetic import THREE_CLASSES, write_cifar100, write_own_folder

from cifar_lit.data.constants import CIFAR10_MEAN
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.image_folder import decode_image, load_image_folder_split
from cifar_lit.data.options import DataOptions
from cifar_lit.reliability.checkpoints import datamodule_state, load_checkpoint
from cifar_lit.reliability.errors import DataError
from cifar_lit.reporting.evaluate import main as evaluate
from cifar_lit.reporting.inference import load_trained_model
from cifar_lit.reporting.plots import confusion_matrix_figure, per_class_accuracy_figure
from cifar_lit.run.train import main as train


@pytest.fixture(scope="module")
def cifar100_copy(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory) -> Path:
    return write_own_folder(tmp_path_factory.mktemp("own") / "minerals")


def run_folder(logdir: Path) -> Path:
    (found,) = logdir.glob("version_*")
    return found


@pytest.fixture(scope="module")
def cifar100_run(cifar100_copy, tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("cifar100_logs")
    assert train([*TINY_FLAGS, *GRIDS, "--data-dir", str(cifar100_copy), "--dataset", "cifar100",
                  "--no-verify-checksums", "--logdir", str(logdir), "--max-epochs", "2", "--lr", "0.05"]) == 0
    return run_folder(logdir)


@pytest.fixture(scope="module")
def own_run(own_folder, tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("own_logs")
    assert train([*TINY_FLAGS, "--data-dir", str(own_folder), "--resize", "--logdir", str(logdir), "--max-epochs", "6",
                  "--batch-size", "20", "--lr-reference-batch-size", "20", "--lr", "0.02"]) == 0
    return run_folder(logdir)


@pytest.mark.slow
def test_cifar100_trains_with_its_100_fine_classes_and_top5(cifar100_run):
    summary = json.loads((cifar100_run / "summary.json").read_text())
    assert summary["dataset"] == "cifar100" and summary["num_classes"] == 100
    assert summary["class_names"][:2] == ["fine_00", "fine_01"] and len(summary["class_names"]) == 100
    assert summary["test_acc_top5"] is not None and summary["test_acc_top5"] >= summary["test_acc"]
    assert summary["target_acc"] is None and "other than CIFAR-10" in summary["target_source"]
    assert summary["epochs_run"] == 2, "no target: the whole schedule ran"
    for picture in ("confusion_matrix.png", "per_class_accuracy.png", "misclassified.png", "correct.png"):
        assert (cifar100_run / picture).stat().st_size > 10_000
    state = datamodule_state(load_checkpoint(cifar100_run / "checkpoints" / "last.ckpt"))
    assert state["dataset"] == "cifar100" and len(state["class_names"]) == 100
    assert tuple(state["mean"]) != CIFAR10_MEAN, "normalization measured on this data set's training images"


@pytest.mark.slow
def test_evaluate_labels_a_cifar100_image_from_the_checkpoint_alone(cifar100_run, cifar100_copy, tmp_path, capsys):
    best = next((cifar100_run / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "report"
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--out", str(out)]) == 0  # data folder from config.yaml
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 100 and len(metrics["per_class_accuracy"]) == 100 and "accuracy_top5" in metrics
    assert "Top-5 accuracy" in (out / "report.md").read_text()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(photo)
    capsys.readouterr()
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--images", str(photo)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{photo}: fine_") and line.count("%") == 3


def test_coarse_labels_give_the_20_superclasses(cifar100_copy):
    module = ImageDataModule(DataOptions(data_dir=str(cifar100_copy), dataset="cifar100", cifar100_labels="coarse",
                                         verify_checksums=False, download=False))
    module.prepare_data()
    module.setup("fit")
    assert module.class_names[0] == "coarse_00" and len(module.class_names) == 20
    assert module.splits["train"].labels.max() == 19 and len(module.splits["train"]) == 300


def test_a_cifar100_copy_that_fails_its_md5_is_refused(cifar100_copy):
    module = ImageDataModule(DataOptions(data_dir=str(cifar100_copy), dataset="cifar100", download=False))
    with pytest.raises(DataError, match="meta fails its MD5 checksum"):
        module.prepare_data()


def test_auto_recognises_cifar100_by_its_folder(cifar100_copy):
    module = ImageDataModule(DataOptions(data_dir=str(cifar100_copy), verify_checksums=False, download=False))
    module.prepare_data()
    assert module.dataset.kind == "cifar100" and len(module.class_names) == 100


@pytest.mark.slow
def test_an_own_folder_of_three_classes_trains_end_to_end(own_run, caplog):
    summary = json.loads((own_run / "summary.json").read_text())
    assert summary["dataset"] == "folder" and summary["class_names"] == sorted(THREE_CLASSES)
    assert summary["num_classes"] == 3 and summary["test_acc_top5"] is None, "top-5 only above ten classes"
    assert summary["test_acc"] > 0.6
    assert summary["config"]["resize"] is True


@pytest.mark.slow
def test_evaluate_labels_an_image_of_the_own_folder_from_the_checkpoint(own_run, own_folder, tmp_path, capsys):
    best = next((own_run / "checkpoints").glob("best-*.ckpt"))
    model = load_trained_model(best)
    assert model.class_names == tuple(sorted(THREE_CLASSES)) and model.mean != CIFAR10_MEAN
    photo = own_folder / "test" / "rust" / "000.png"  # 32x32 RGB, a rust-coloured one
    capsys.readouterr()
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--images", str(photo)]) == 0
    assert capsys.readouterr().out.startswith(f"{photo}: rust ")


@pytest.mark.slow
def test_evaluate_refuses_a_data_folder_of_other_classes(own_run, image_folder, capsys):
    best = next((own_run / "checkpoints").glob("best-*.ckpt"))
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--data-dir", str(image_folder)]) == 2
    err = capsys.readouterr().err
    assert "airplane, automobile" in err and "lichen, rust, slate" in err and "Traceback" not in err


def test_images_that_are_not_32x32_are_refused_without_resize(own_folder, tmp_path):
    copy = write_own_folder(tmp_path / "own")
    with pytest.raises(DataError, match=r"001.png is 48x40 pixels; images must be 32x32. Pass --resize"):
        load_image_folder_split(copy, "train")
    resized = load_image_folder_split(copy, "train", resize=True)
    assert resized.images.shape == (60, 32, 32, 3) and sorted(set(resized.labels.tolist())) == [0, 1, 2]


def test_grayscale_images_become_rgb_and_the_log_counts_them(tmp_path, caplog):
    copy = write_own_folder(tmp_path / "own")
    with caplog.at_level("INFO"):
        split = load_image_folder_split(copy, "test", resize=True)
    assert "Converted to RGB: 3 L images" in caplog.text  # index 2 of each class, 6 per class in test
    gray = split.images[2]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_a_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    decoded, mode = decode_image(path)
    assert mode is not None and mode.startswith("I")
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.abs(decoded[..., 0].astype(int) - expected.astype(int)).max() <= 1
    assert decoded.max() == 255 and decoded.min() == 0 and (decoded < 250).mean() > 0.9


def test_hidden_files_beside_the_images_are_skipped(tmp_path):
    copy = write_own_folder(tmp_path / "own")
    (copy / "test" / "rust" / "._000.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert len(load_image_folder_split(copy, "test", resize=True)) == 18


FORMATS = {".JPG": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".png": "PNG", ".PNG": "PNG", ".bmp": "BMP",
           ".tif": "TIFF", ".gif": "GIF"}


def test_every_picture_pillow_opens_is_used_whatever_its_suffix_and_other_files_are_named(tmp_path, caplog):
    """A class folder of eight formats in mixed-case suffixes and a subfolder of the same: all 32 are trained on, and
    the files that are not pictures are named in one warning with their count."""
    copy = write_own_folder(tmp_path / "own")
    folder = copy / "train" / "rust"
    for old in folder.iterdir():
        old.unlink()
    rng = np.random.default_rng(0)
    for where in (folder, folder / "more", folder / "more" / "deeper"):
        where.mkdir(exist_ok=True)
        for index, (suffix, kind) in enumerate(FORMATS.items()):
            if where.name == "deeper" and index % 2:
                continue
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(where / f"{index}{suffix}", kind)
    (folder / "notes.txt").write_text("where these came from")
    (folder / "more" / "labels.csv").write_text("a,b")
    with caplog.at_level("INFO"):
        split = load_image_folder_split(copy, "train", resize=True)
    rust = list(THREE_CLASSES).index("rust")
    assert int((split.labels == rust).sum()) == 8 + 8 + 4
    assert "Skipped 2 file(s) of" in caplog.text and "more/labels.csv, notes.txt." in caplog.text
    assert "Using the images in 2 subfolder(s)" in caplog.text


def transparent_pictures(folder: Path) -> list[Path]:
    """Three RGBA PNGs that look the same (a red square on a transparent background) but hide white, black and
    green under their transparent pixels."""
    paths = []
    for name, hidden in (("white", (255, 255, 255)), ("black", (0, 0, 0)), ("green", (0, 255, 0))):
        pixels = np.zeros((48, 48, 4), dtype=np.uint8)
        pixels[..., :3], pixels[..., 3] = hidden, 0
        pixels[12:36, 12:36] = (200, 30, 30, 255)
        pixels[8:12, 8:40] = (200, 30, 30, 128)  # half transparent
        paths.append(folder / f"{name}.png")
        Image.fromarray(pixels, mode="RGBA").save(paths[-1])
    return paths


def every_way_in(path: Path) -> dict[str, np.ndarray]:
    """One picture as the training data, evaluate.py --images, the demo and the exported demo read it."""
    from cifar_lit.app.demo import read_image
    from cifar_lit.reporting.inference import read_user_image

    return {"training data": decode_image(path, resize=True)[0], "evaluate.py": read_user_image(path),
            "demo": read_image(path)}


def test_transparent_pictures_are_seen_on_white_whatever_their_hidden_colour(tmp_path):
    seen = [every_way_in(path) for path in transparent_pictures(tmp_path)]
    first = seen[0]["training data"]
    for ways in seen:
        for way, array in ways.items():
            assert np.array_equal(array, first), f"{way} sees the hidden colour"
    assert (first[0, 0] == 255).all() and first[16, 16, 0] > 150 > first[16, 16, 1], "white around, red inside"


def test_a_16_bit_picture_is_scaled_alike_in_training_evaluate_and_the_demo(tmp_path):
    path = tmp_path / "dim.png"
    Image.fromarray(np.full((32, 32), 8000, dtype=np.uint16)).save(path)  # dim: an eighth of the 16-bit range
    for way, array in every_way_in(path).items():
        assert (array == round(8000 / 257)).all(), way


def test_one_class_is_not_a_data_set(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "one" / split / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="has 1 class folder"):
        ImageDataModule(DataOptions(data_dir=str(tmp_path / "one"), download=False)).prepare_data()


def overlapping_labels(figure, labels) -> list[tuple[str, str]]:
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in labels if label.get_text()]
    return [(a, b) for (a, box_a), (b, box_b) in zip(boxes, boxes[1:], strict=False) if box_a.overlaps(box_b)]


def test_a_100_class_confusion_figure_is_readable():
    names = [f"class_{i:02d}" for i in range(100)]
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (100, 100)) + np.diag(rng.integers(20, 90, 100))
    figure = confusion_matrix_figure(counts, names, "Confusion matrix, 100 classes")
    width, height = figure.get_size_inches()
    assert width >= 14 and height >= 14, "grows with the classes"
    axis = figure.axes[0]
    assert not axis.texts, "no numbers in 10,000 cells"
    assert overlapping_labels(figure, axis.get_xticklabels()) == []
    assert overlapping_labels(figure, axis.get_yticklabels()) == []
    assert len([label for label in axis.get_yticklabels() if label.get_text()]) == 100


def test_per_class_bars_at_100_classes_are_sorted_and_name_the_worst():
    names = [f"class_{i:02d}" for i in range(100)]
    accuracies = np.linspace(1.0, 0.0, 100)  # class_99 is the worst
    figure = per_class_accuracy_figure(accuracies, names, "Accuracy per class")
    axis = figure.axes[0]
    assert "hardest: class_99 0%, class_98 1%, class_97 2%" in axis.get_title()
    assert [label.get_text() for label in axis.get_yticklabels()][:2] == ["class_99", "class_98"]
    assert overlapping_labels(figure, axis.get_yticklabels()) == []


def test_ten_class_figures_keep_their_numbers():
    figure = confusion_matrix_figure(np.eye(10, dtype=int) * 7, [str(i) for i in range(10)], "ten")
    assert len(figure.axes[0].texts) == 100


def test_top5_counts_the_true_class_among_the_five_highest():
    from cifar_lit.training.metrics import top_k_correct

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [9.0, 8, 7, 6, 5, 4]])
    assert float(top_k_correct(logits, torch.tensor([4, 5]), 5)) == 1.0
    assert float(top_k_correct(logits[:, :3], torch.tensor([2, 1]), 5)) == 2.0
