"""Throughput of the data path alone (no model): uint8 tensors augmented batch-wise vs PIL transforms per image.

    python benchmarks/data_path.py --data-dir DIR [--device cpu|cuda] [--epochs 2] [--workers 0 2]

Both paths produce the same training batches: random crop with 4-pixel zero padding, horizontal flip, normalization,
float32 NCHW. The tensor path is what train.py uses by default (TensorBatchLoader, then augment_batch in the
DataModule's on_after_batch_transfer); the PIL path is torchvision's transforms in DataLoader workers. Writes
benchmarks/results/data_path-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cifar_lit.data.augment import augment_batch, channel_tensor
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD
from cifar_lit.data.datamodule import CIFAR10DataModule
from cifar_lit.data.loaders import PILImageDataset, TensorBatchLoader, derive_seed
from cifar_lit.provenance import PROJECT_ROOT, command_line, device_description, git_commit, versions


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tensor_path_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int, epoch: int) -> float:
    """Seconds for one epoch of batches, augmented and normalized on the images' device."""
    device = images.device
    mean, std = channel_tensor(CIFAR10_MEAN, device), channel_tensor(CIFAR10_STD, device)
    loader = TensorBatchLoader(images, labels, batch_size, shuffle=True, drop_last=True, epoch_fn=lambda: epoch)
    generator = torch.Generator(device=device)
    synchronize(device)
    start = time.perf_counter()
    for batch_images, _ in loader:
        batch_epoch, index = loader.next_batch_key()
        generator.manual_seed(derive_seed(0, batch_epoch, index, 0))
        augment_batch(batch_images, generator, mean, std).contiguous(memory_format=torch.channels_last)
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
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    module = CIFAR10DataModule(data_dir=args.data_dir, download=False, batch_size=args.batch_size)
    module.setup("fit")
    train = module.splits["train"]
    images = torch.from_numpy(np.ascontiguousarray(train.images)).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(train.labels).to(device)
    per_epoch = (len(train) // args.batch_size) * args.batch_size

    results: dict[str, dict] = {}
    tensor_path_epoch(images, labels, args.batch_size, 0)
    seconds = [tensor_path_epoch(images, labels, args.batch_size, epoch + 1) for epoch in range(args.epochs)]
    results["tensor"] = {"seconds_per_epoch": seconds, "images_per_second": per_epoch / statistics.median(seconds)}
    print(f"tensor path on {device}: {results['tensor']['images_per_second']:,.0f} images/s", flush=True)
    dataset = PILImageDataset(train, module._pil_transform(train=True))
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]).strip("-").lower()
    path = out / f"data_path-{slug}-{record['date']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"tensor path / best PIL path: {record['tensor_over_best_pil']:.1f}x; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
