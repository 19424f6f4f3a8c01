"""Where a training step's time goes on the GPU: the bare step of train.py's fast path, without Lightning.

    python benchmarks/profile_step.py --data-dir DIR [--batch-sizes 256 512 1024] [--compile] [--mode MODE]

The step is the one train.py runs: a gather from zero-padded uint8 NHWC data on the GPU, one random draw per
image, the fused augmentation straight to bf16 channels_last, network + label-smoothed loss, backward, fused SGD.
For each batch size: steady-state images/s; then a torch.profiler trace of 10 steps at the first size: the top
kernels by GPU time and the share of wall time the GPU spent running kernels. `--compile` compiles augmentation and
network + loss as train.py does, with torch.compile's `--mode` (default, reduce-overhead, max-autotune,
max-autotune-no-cudagraphs), after a warm-up that is timed and printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from cifar_lit.data.augment import augment, draw_codes, pad, scale_and_shift
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.sources import load_split
from cifar_lit.models import resnet18
from cifar_lit.training.compile_warmup import compile_options
from cifar_lit.training.optim import build_sgd

PADDING = 4


def make_step(batch_size: int, padded: torch.Tensor, labels: torch.Tensor, compile_mode: str | None):
    """A closure running one training step; compiled parts are compiled on first use."""
    model = resnet18().cuda().to(memory_format=torch.channels_last)
    optimizer = build_sgd(model, 0.1, 0.9, True, 5e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scale, shift = scale_and_shift(CIFAR10_MEAN, CIFAR10_STD, "cuda")
    generator = torch.Generator(device="cuda")

    def forward(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(model(inputs), targets)

    transform = augment
    if compile_mode is not None:
        forward = torch.compile(forward, **compile_options(compile_mode))
        transform = torch.compile(augment, **compile_options())

    def step(index: int) -> None:
        generator.manual_seed(index)
        pick = torch.randint(0, len(labels), (batch_size,), device="cuda", generator=generator)
        codes = draw_codes(batch_size, PADDING, True, 0, (IMAGE_SIZE, IMAGE_SIZE), generator, torch.device("cuda"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            inputs = transform(padded[pick], codes, scale, shift, PADDING, True, 0, torch.bfloat16)
            loss = forward(inputs, labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    split = load_split(Path(args.data_dir), "train")
    padded = pad(torch.from_numpy(np.ascontiguousarray(split.images)).cuda(), PADDING)
    labels = torch.from_numpy(split.labels).cuda()
    label = f"compiled ({args.mode})" if args.compile else "eager"
    for batch_size in args.batch_sizes:
        step = make_step(batch_size, padded, labels, args.mode if args.compile else None)
        start = time.perf_counter()
        for index in range(3):  # compiles (with --compile) and autotunes cuDNN
            step(index)
        torch.cuda.synchronize()
        print(f"batch {batch_size} {label}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
        for index in range(10):
            step(index)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for index in range(args.steps):
            step(index)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"batch {batch_size} {label}: {batch_size * args.steps / seconds:,.0f} images/s "
              f"({1000 * seconds / args.steps:.2f} ms/step)", flush=True)
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
            print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
            print(f"profiled 10 steps: wall {wall * 1000:.1f} ms, kernel time {gpu_total * 1000:.1f} ms, "
                  f"GPU busy {100 * gpu_total / wall:.1f}% (profiler overhead included in wall)")


if __name__ == "__main__":
    main()
