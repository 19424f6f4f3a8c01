"""Where a training step's time goes on the GPU: the bare step of train.py's fast path, without Lightning.

    python benchmarks/profile_step.py --data-dir DIR [--batch-sizes 256 512 1024] [--compile] [--mode MODE]
                                      [--device cuda|cpu] [--width 64]

The step is the one train.py runs: a gather from zero-padded uint8 NHWC data on the GPU, one random draw per
image, the fused augmentation straight to bf16 channels_last, network + label-smoothed loss, backward, fused SGD.
For each batch size: steady-state images/s; then a torch.profiler trace of 10 steps at the first size: the top
kernels by GPU time and the share of wall time the GPU spent running kernels. `--compile` compiles augmentation and
network + loss as train.py does, with torch.compile's `--mode` (default, reduce-overhead, max-autotune,
max-autotune-no-cudagraphs), after a warm-up that is timed and printed. `--device cpu` runs the same code on the
CPU (a smoke run with a narrow `--width`; its kernel table is the CPU's).
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
from cifar_lit.hardware.timing import synchronize
from cifar_lit.models import resnet18
from cifar_lit.training.compile_warmup import compile_options
from cifar_lit.training.optim import build_sgd

PADDING = 4


def make_step(batch_size: int, padded: torch.Tensor, labels: torch.Tensor, compile_mode: str | None, width: int):
    """A closure running one training step on the data's device; compiled parts are compiled on first use."""
    device = padded.device
    model = resnet18(width=width).to(device, memory_format=torch.channels_last)
    optimizer = build_sgd(model, 0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scale, shift = scale_and_shift(CIFAR10_MEAN, CIFAR10_STD, device)
    generator = torch.Generator(device=device)

    def forward(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(model(inputs), targets)

    transform = augment
    if compile_mode is not None:
        forward = torch.compile(forward, **compile_options(compile_mode))
        transform = torch.compile(augment, **compile_options())

    def step(index: int) -> None:
        generator.manual_seed(index)
        pick = torch.randint(0, len(labels), (batch_size,), device=device, generator=generator)
        codes = draw_codes(batch_size, PADDING, flip=True, cutout=0, size=(IMAGE_SIZE, IMAGE_SIZE),
                           generator=generator, device=device)
        inputs = transform(padded[pick], codes, scale, shift, padding=PADDING, flip=True, cutout=0,
                           dtype=torch.bfloat16)  # outside autocast
        with torch.autocast(device.type, dtype=torch.bfloat16):  # as Lightning's loop: the step inside
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
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps after the compiling ones")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (64: the ResNet18)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    split = load_split(Path(args.data_dir), "train")
    padded = pad(torch.from_numpy(np.ascontiguousarray(split.images)).to(device), PADDING)
    labels = torch.from_numpy(split.labels).to(device)
    label = f"compiled ({args.mode})" if args.compile else "eager"
    for batch_size in args.batch_sizes:
        step = make_step(batch_size, padded, labels, args.mode if args.compile else None, args.width)
        start = time.perf_counter()
        for index in range(3):  # compiles (with --compile) and autotunes cuDNN
            step(index)
        synchronize(device)
        print(f"batch {batch_size} {label}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
        for index in range(args.warmup_steps):
            step(index)
        synchronize(device)
        start = time.perf_counter()
        for index in range(args.steps):
            step(index)
        synchronize(device)
        seconds = time.perf_counter() - start
        print(f"batch {batch_size} {label}: {batch_size * args.steps / seconds:,.0f} images/s "
              f"({1000 * seconds / args.steps:.2f} ms/step)", flush=True)
        if batch_size == args.batch_sizes[0]:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as trace:
                synchronize(device)
                start = time.perf_counter()
                for index in range(10):
                    step(index)
                synchronize(device)
                wall = time.perf_counter() - start
            events = trace.key_averages()
            sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(events.table(sort_by=sort_by, row_limit=25, max_name_column_width=70))
            if device.type == "cuda":
                gpu_total = sum(e.self_device_time_total for e in events) / 1e6
                print(f"profiled 10 steps: wall {wall * 1000:.1f} ms, kernel time {gpu_total * 1000:.1f} ms, "
                      f"GPU busy {100 * gpu_total / wall:.1f}% (profiler overhead included in wall)")


if __name__ == "__main__":
    main()
