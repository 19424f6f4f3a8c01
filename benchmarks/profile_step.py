"""Where a training step's time goes on the GPU, before any tuning.

    python benchmarks/profile_step.py --data-dir DIR [--batch-sizes 256 512 1024] [--compile]

For each batch size: steady-state images/s of the bare training step (the same augmentation, model, optimizer and
bf16 autocast as train.py), then a torch.profiler trace of a few steps at the first size: the top kernels by GPU
time and the share of wall time the GPU spent running kernels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from cifar_lit.data.augment import augment_batch, channel_tensor
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD
from cifar_lit.data.sources import load_split
from cifar_lit.models import resnet18
from cifar_lit.optim import build_sgd
from cifar_lit.warmup import run_every_shape


def make_step(model, optimizer, images, labels, batch_size, mean, std):
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator(device="cuda")

    def step(index: int) -> None:
        pick = torch.randint(0, len(labels), (batch_size,), device="cuda", generator=generator)
        generator.manual_seed(index)
        inputs = augment_batch(images[pick], generator, mean, std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(inputs), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, criterion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    split = load_split(Path(args.data_dir), "train")
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous().cuda()
    labels = torch.from_numpy(split.labels).cuda()
    mean, std = channel_tensor(CIFAR10_MEAN, "cuda"), channel_tensor(CIFAR10_STD, "cuda")
    for batch_size in args.batch_sizes:
        model = resnet18().cuda().to(memory_format=torch.channels_last)
        optimizer = build_sgd(model, 0.1, 0.9, True, 5e-4)
        step, criterion = make_step(model, optimizer, images, labels, batch_size, mean, std)
        if args.compile:
            model.compile()
            seconds = run_every_shape(model, batch_size, [], criterion,
                                      lambda: torch.autocast("cuda", dtype=torch.bfloat16), channels_last=True)
            print(f"compile warm-up {seconds:.1f} s")
        for index in range(10):
            step(index)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for index in range(args.steps):
            step(index)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"batch {batch_size} {'compiled' if args.compile else 'eager'}: {batch_size * args.steps / seconds:,.0f} "
              f"images/s ({1000 * seconds / args.steps:.2f} ms/step)", flush=True)
        if batch_size == args.batch_sizes[0]:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
                torch.cuda.synchronize()
                start = time.perf_counter()
                for index in range(10):
                    step(index)
                torch.cuda.synchronize()
                wall = time.perf_counter() - start
            events = trace.key_averages()
            gpu_total = sum(e.self_device_time_total for e in events) / 1e6
            print(trace.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
            print(f"profiled 10 steps: wall {wall * 1000:.1f} ms, kernel time {gpu_total * 1000:.1f} ms, "
                  f"GPU busy {100 * gpu_total / wall:.1f}% (profiler overhead included in wall)")


if __name__ == "__main__":
    main()
