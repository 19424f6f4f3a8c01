import os
import pickle
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import make_images

from cifar_lit.data import image_folder as image_folder_module
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.image_folder import load_image_folder_split
from cifar_lit.data.jpeg_copy import main as jpeg_copy_main
from cifar_lit.data.jpeg_copy import write_jpeg_copy
from cifar_lit.data.options import DataOptions
from cifar_lit.data.sources import load_split, load_torchvision_split
from cifar_lit.data.stats import channel_stats
from cifar_lit.reliability.errors import DataError


def test_image_folder_is_read_in_class_order(image_folder):
    split = load_split(image_folder, "train")
    assert split.images.shape == (300, 32, 32, 3) and split.images.dtype == np.uint8
    assert (np.bincount(split.labels) == 30).all()
    first_cat = Image.open(sorted((image_folder / "train" / "cat").iterdir())[0])
    assert np.array_equal(split.images[3 * 30], np.asarray(first_cat))


def test_decoded_folder_is_cached_and_reused(image_folder, monkeypatch):
    first = load_image_folder_split(image_folder, "test")
    cache = image_folder / ".cifar_lit_cache" / "test.npz"
    assert cache.is_file()
    monkeypatch.setattr(image_folder_module, "decode_image_folder", lambda *a, **k: pytest.fail("decoded again"))
    second = load_image_folder_split(image_folder, "test")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)


def test_stale_cache_is_rebuilt_when_an_image_changes(image_folder, caplog):
    load_image_folder_split(image_folder, "test")
    target = sorted((image_folder / "test" / "dog").iterdir())[0]
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    rebuilt = load_image_folder_split(image_folder, "test")
    assert "no longer matches" in caplog.text
    assert rebuilt.images[5 * 10].max() == 0


def test_damaged_cache_is_rebuilt(image_folder, caplog):
    reference = load_image_folder_split(image_folder, "test")
    cache = image_folder / ".cifar_lit_cache" / "test.npz"
    cache.write_bytes(cache.read_bytes()[:1000])
    again = load_image_folder_split(image_folder, "test")
    assert "unreadable" in caplog.text and np.array_equal(again.images, reference.images)


def test_interrupted_cache_write_leaves_no_cache(image_folder, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder_split(image_folder, "test")
    leftovers = list((image_folder / ".cifar_lit_cache").iterdir())
    assert leftovers == []


def test_torchvision_batches_are_read(batches_folder):
    split = load_torchvision_split(batches_folder, "train", verify_checksums=False)
    expected, labels = make_images(10, 0)
    assert split.images.shape == (100, 32, 32, 3)
    assert sorted(map(bytes, split.images)) == sorted(map(bytes, expected))
    assert sorted(split.labels.tolist()) == sorted(labels.tolist())


def test_batch_file_failing_its_checksum_is_named(batches_folder):
    with pytest.raises(DataError, match=r"data_batch_1 fails its MD5 checksum.*--download"):
        load_torchvision_split(batches_folder, "train", verify_checksums=True)


def test_batch_file_that_would_run_code_is_refused(batches_folder, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(batches_folder / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": Payload(), "labels": []}, handle)
    with pytest.raises(DataError, match="test_batch"):
        load_torchvision_split(batches_folder, "test", verify_checksums=False)
    assert not marker.exists()


def test_missing_batch_file_is_named(batches_folder):
    (batches_folder / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_torchvision_split(batches_folder, "train", verify_checksums=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: __import__("shutil").rmtree(root / "train" / "frog"), r"test has frog and .*train does not"),
        (lambda root: (root / "test" / "unicorn").mkdir(), r"test has unicorn and .*train does not"),
        (lambda root: [p.unlink() for p in (root / "test" / "ship").iterdir()], r"ship holds no images"),
        (lambda root: __import__("shutil").rmtree(root / "test"), "has no 'test' folder"),
    ],
    ids=["missing-class", "extra-class", "empty-class", "missing-split"],
)
def test_wrong_layout_is_explained(image_folder, damage, message):
    damage(image_folder)
    with pytest.raises(DataError, match=message):
        ImageDataModule(DataOptions(data_dir=str(image_folder), download=False)).prepare_data()


def test_cifar10_asked_for_by_name_refuses_a_folder_of_other_classes(image_folder):
    for split in ("train", "test"):
        (image_folder / split / "frog").rename(image_folder / split / "toad")
    with pytest.raises(DataError, match="--dataset cifar10 needs one class folder per CIFAR-10 class.*toad"):
        ImageDataModule(DataOptions(data_dir=str(image_folder), dataset="cifar10", download=False)).prepare_data()
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), download=False))  # auto: its own classes
    module.prepare_data()
    assert "toad" in module.class_names and module.dataset.kind == "folder"


def test_truncated_image_is_named(image_folder):
    victim = sorted((image_folder / "train" / "horse").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"Cannot read the image .*{victim.name}.*corrupt"):
        load_image_folder_split(image_folder, "train")


def test_not_an_image_is_named(image_folder):
    victim = image_folder / "train" / "cat" / "notes.png"
    victim.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        load_image_folder_split(image_folder, "train")


def test_wrong_image_size_is_named(image_folder):
    victim = image_folder / "test" / "bird" / "big.png"
    Image.fromarray(np.zeros((64, 48, 3), dtype=np.uint8)).save(victim)
    with pytest.raises(DataError, match=r"big.png is 48x64 pixels; images must be 32x32. Pass --resize"):
        load_image_folder_split(image_folder, "test")


def test_missing_dataset_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"No CIFAR-10 copy was found in .*--download.*--data-dir"):
        ImageDataModule(DataOptions(data_dir=str(tmp_path), download=False)).prepare_data()


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=r"Downloading CIFAR-10 into .* failed.*--no-download"):
        ImageDataModule(DataOptions(data_dir=str(tmp_path / "new"), download=True)).prepare_data()
    assert not (tmp_path / "new").exists(), "a failed download leaves no folder that the next run could mistake"
    kept = tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        ImageDataModule(DataOptions(data_dir=str(kept), download=True)).prepare_data()
    assert [path.name for path in kept.iterdir()] == ["notes.txt"], "only what the download added is removed"


def test_channel_stats_of_known_images():
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[0, ..., 0] = 255
    images[1, ..., 1] = 255
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (0.5, 0.5, 0.0))
    np.testing.assert_allclose(std, (0.5, 0.5, 0.0))


def test_computed_normalization_is_used_and_checkpointed(image_folder):
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), normalization="computed"))
    module.setup("fit")
    assert module.mean != CIFAR10_MEAN
    np.testing.assert_allclose(module.mean, channel_stats(module.splits["train"].images)[0])
    restored = ImageDataModule(DataOptions(data_dir=str(image_folder)))
    restored.load_state_dict(module.state_dict())
    assert restored.mean == pytest.approx(module.mean) and restored.std == pytest.approx(module.std)
    assert ImageDataModule().std == CIFAR10_STD


def test_default_validation_is_the_test_set_and_split_is_seeded(image_folder):
    default = ImageDataModule(DataOptions(data_dir=str(image_folder)))
    default.setup("fit")
    assert default.splits["val"] is default.splits["test"]
    held = [ImageDataModule(DataOptions(data_dir=str(image_folder), val_split=50, seed=s)) for s in (1, 1, 2)]
    for module in held:
        module.setup("fit")
    assert len(held[0].splits["val"]) == 50 and len(held[0].splits["train"]) == 250
    assert np.array_equal(held[0].splits["val"].images, held[1].splits["val"].images)
    assert not np.array_equal(held[0].splits["val"].images, held[2].splits["val"].images)


def test_tensor_path_yields_uint8_nhwc_and_transfers_to_normalized_channels_last(image_folder):
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=16, eval_batch_size=64,
                                         channels_last=True))
    module.setup("fit")
    images, labels = next(iter(module.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (64, 32, 32, 3) and labels.dtype == torch.int64
    out, _ = module.on_after_batch_transfer((images, labels), 0)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    expected = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_training_images_are_stored_padded_once_and_batches_come_out_cropped(image_folder):
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=16, crop_padding=4,
                                         channels_last=True))
    module.setup("fit")
    images, _ = next(iter(module.train_dataloader()))
    assert images.shape == (16, 40, 40, 3)
    assert (images[:, :4] == 0).all() and (images[:, :, -4:] == 0).all()  # the zero border of the crop
    out = module.train_transform(images, epoch=0, index=0)
    assert out.shape == (16, 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)


def test_pil_path_batches_match_the_tensor_path_without_augmentation(image_folder):
    options = dict(data_dir=str(image_folder), eval_batch_size=40, num_workers=0)
    tensor_dm = ImageDataModule(DataOptions(**options))
    pil_dm = ImageDataModule(DataOptions(data_path="pil", **options))
    for module in (tensor_dm, pil_dm):
        module.setup("fit")
    tensor_images, tensor_labels = tensor_dm.on_after_batch_transfer(next(iter(tensor_dm.test_dataloader())), 0)
    pil_images, pil_labels = pil_dm.on_after_batch_transfer(next(iter(pil_dm.test_dataloader())), 0)
    assert torch.equal(tensor_labels, pil_labels)
    torch.testing.assert_close(tensor_images, pil_images, atol=1e-5, rtol=0)


def test_cache_write_removes_what_a_killed_decode_left_behind(image_folder):
    cache_dir = image_folder / ".cifar_lit_cache"
    cache_dir.mkdir()
    dead = _finished_pid()
    stale = cache_dir / f".test.npz.{dead}.tmp"
    alive = cache_dir / f".test.npz.{os.getppid()}.tmp"  # a running writer's file stays
    stale.write_bytes(b"half a cache")
    alive.write_bytes(b"being written")
    load_image_folder_split(image_folder, "test")
    assert not stale.exists() and alive.exists()


def _finished_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_image_folder_is_listed_and_checked_once_per_process(image_folder, monkeypatch):
    listed = []
    real_list = image_folder_module.list_image_folder
    monkeypatch.setattr(image_folder_module, "list_image_folder",
                        lambda *args: listed.append(args[1]) or real_list(*args))
    module = ImageDataModule(DataOptions(data_dir=str(image_folder)))
    module.prepare_data()
    module.setup("fit")
    module.prepare_data()  # Lightning calls it again inside fit
    module.setup("fit")
    assert sorted(listed) == ["test", "train"]  # once per split: decoded, cached and kept for setup
    listed.clear()
    other_rank = ImageDataModule(DataOptions(data_dir=str(image_folder)))
    other_rank.setup("fit")  # a process that did not prepare loads the splits itself
    assert sorted(listed) == ["test", "train"] and len(other_rank.splits["train"]) == 300


def test_the_augmentation_preview_runs_on_the_training_device_when_the_data_stays_on_the_host(image_folder):
    """With --no-data-on-device the images stay in host memory and training batches reach the device one by one:
    the preview augments its batch there too, so a compiled augmentation is not compiled again for the host."""
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=30, data_on_device=False,
                                     download=False))
    module.prepare_data()
    module.setup("fit")
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0,
                                     world_size=1, precision="32-true")
    seen = []

    def augment_on_the_spot(images, codes, *args, **kwargs):
        seen.append((images.device, images.shape))
        return torch.zeros(len(images), 3, 32, 32)

    module.transforms.augment_fn = augment_on_the_spot
    module.transforms._generator = lambda device: torch.Generator()  # meta tensors draw nothing; the device is asked
    module.preview_batch(8)
    assert module._as_tensors("train")[0].device.type == "cpu"
    assert seen == [(torch.device("meta"), (30, 40, 40, 3))]


def test_dataloader_workers_are_capped_at_the_cores(image_folder, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    module = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=30, data_path="pil", num_workers=64,
                                         download=False))
    module.prepare_data()
    module.setup("fit")
    assert module.train_dataloader().num_workers == module.val_dataloader().num_workers == 2


def test_a_jpeg_copy_is_an_image_folder_of_cifar10_that_trains_as_cifar10(batches_folder, tmp_path, capsys):
    written = write_jpeg_copy(batches_folder, tmp_path / "copy", verify_checksums=False)
    original = load_torchvision_split(batches_folder, "test", verify_checksums=False)
    assert written == {"train": 100, "test": 50}
    assert sorted(p.name for p in (tmp_path / "copy" / "test").iterdir()) == sorted(CIFAR10_CLASSES)
    first = tmp_path / "copy" / "test" / CIFAR10_CLASSES[original.labels[0]] / "0000.jpg"
    with Image.open(first) as image:
        assert image.format == "JPEG" and image.size == (32, 32)
        distances = np.abs(original.images.astype(int) - np.asarray(image, dtype=int)).mean(axis=(1, 2, 3))
        assert distances.argmin() == 0, "the nearest original is its own: the same picture, as a JPEG"
    module = ImageDataModule(DataOptions(data_dir=str(tmp_path / "copy"), download=False))
    module.prepare_data()
    assert module.dataset.kind == "cifar10" and module.class_names == CIFAR10_CLASSES
    assert jpeg_copy_main(["--data-dir", str(batches_folder), "--out", str(tmp_path / "copy")]) == 2
    assert "exists already" in capsys.readouterr().err
