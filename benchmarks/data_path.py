"""Throughput of the data path alone (no model): uint8 tensors augmented batch-wise vs PIL transforms per image.

    python benchmarks/data_path.py --data-dir DIR [--device cpu|cuda] [--epochs 2] [--workers 0 2] [--compile]

Both paths produce the same training batches: random crop with 4-pixel zero padding, horizontal flip, normalization,
float32 NCHW in channels_last layout. The tensor path is what train.py uses by default (zero-padded uint8 NHWC data,
TensorBatchLoader, then one random draw per image and `augment` in the DataModule's on_after_batch_transfer;
compiled into one kernel with --compile); the PIL path is torchvision's transforms in DataLoader workers. Writes
benchmarks/results/data_path-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from cifar_lit.data.augment import augment, draw_codes, pad, scale_and_shift
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.loaders import PILImageDataset, TensorBatchLoader, derive_seed
from cifar_lit.data.options import DataOptions
from cifar_lit.data.pil_path import pil_transform
from cifar_lit.reporting.provenance import (
    PROJECT_ROOT,
    command_line,
    device_description,
    git_commit,
    versions,
    write_record,
)
from cifar_lit.training.compile_warmup import compile_options

PADDING = 4


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_path_epoch(padded: torch.Tensor, labels: torch.Tensor, batch_size: int, epoch: int,
                      transform: Callable[..., torch.Tensor]) -> float:
    """Seconds for one epoch of batches of zero-padded uint8 NHWC images, augmented and normalized on their device."""
    device = padded.device
    scale, shift = scale_and_shift(CIFAR10_MEAN, CIFAR10_STD, device)
    loader = TensorBatchLoader(padded, labels, batch_size, shuffle=True, drop_last=True, epoch_fn=lambda: epoch)
    generator = torch.Generator(device=device)
    synchronize(device)
    start = time.perf_counter()
    for batch_images, _ in loader:
        batch_epoch, index = loader.next_batch_key()
        generator.manual_seed(derive_seed(0, batch_epoch, index, 0))
        codes = draw_codes(len(batch_images), PADDING, flip=True, cutout=0, size=(IMAGE_SIZE, IMAGE_SIZE),
                           generator=generator, device=device)
        transform(batch_images, codes, scale, shift, padding=PADDING, flip=True, cutout=0)
    synchronize(device)
    return time.perf_counter() - start


def pil_path_epoch(loader: DataLoader, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for batch_images, _ in loader:
        batch_images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    synchronize(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (after one untimed warm-up)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers for the PIL path")
    parser.add_argument("--compile", action="store_true", help="compile the tensor path's augmentation")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    module = ImageDataModule(DataOptions(data_dir=args.data_dir, download=False, batch_size=args.batch_size))
    module.setup("fit")
    train = module.splits["train"]
    padded = pad(torch.from_numpy(np.ascontiguousarray(train.images)).to(device), PADDING)
    labels = torch.from_numpy(train.labels).to(device)
    per_epoch = (len(train) // args.batch_size) * args.batch_size
    transform = torch.compile(augment, **compile_options()) if args.compile else augment

    results: dict[str, dict] = {}
    tensor_path_epoch(padded, labels, args.batch_size, 0, transform)
    seconds = [tensor_path_epoch(padded, labels, args.batch_size, epoch + 1, transform)
               for epoch in range(args.epochs)]
    results["tensor"] = {"seconds_per_epoch": seconds, "images_per_second": per_epoch / statistics.median(seconds)}
    print(f"tensor path on {device}: {results['tensor']['images_per_second']:,.0f} images/s", flush=True)
    dataset = PILImageDataset(train, pil_transform(module.options, module.mean, module.std, train=True))
    for workers in args.workers:
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            persistent_workers=workers > 0, pin_memory=device.type == "cuda")
        pil_path_epoch(loader, device)
        seconds = [pil_path_epoch(loader, device) for _ in range(args.epochs)]
        results[f"pil_{workers}_workers"] = {"seconds_per_epoch": seconds,
                                             "images_per_second": per_epoch / statistics.median(seconds)}
        print(f"PIL path, {workers} workers: {results[f'pil_{workers}_workers']['images_per_second']:,.0f} images/s",
              flush=True)

    record = {
        "benchmark": "data_path",
        "what": "training-batch production only (crop 4 + flip + normalize to float32 channels_last), no model",
        "tensor_path_compiled": args.compile,
        "device": device_description(device),
        "data": args.data_dir,
        "batch_size": args.batch_size,
        "images_per_epoch": per_epoch,
        "results": results,
        "tensor_over_best_pil": results["tensor"]["images_per_second"]
        / max(v["images_per_second"] for k, v in results.items() if k.startswith("pil")),
        "command": command_line(program="benchmarks/data_path.py"),
        "git_commit": git_commit(),
        "versions": versions(),
        "date": dt.date.today().isoformat(),
    }
    path = write_record(args.out, "data_path", record)
    print(f"tensor path / best PIL path: {record['tensor_over_best_pil']:.1f}x; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
