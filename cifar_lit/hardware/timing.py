"""Waiting for and timing a device's queue, and its memory high-water mark: CUDA (and ROCm) and MPS alike.

Host clocks alone would time an accelerator's work only up to when it was queued; these helpers mark moments in
the device's own stream (CUDA or MPS events) and read an interval only once its end has been reached.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch


def on_accelerator(device: torch.device) -> bool:
    return device.type in ("cuda", "mps")


def synchronize(device: torch.device) -> None:
    """Wait until everything queued on `device` has run (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _event(device: torch.device) -> Any:
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
    elif device.type == "mps":
        event = torch.mps.Event(enable_timing=True)
    else:
        return None
    event.record()
    return event


class Stopwatch:
    """Marks moments on the host and, on CUDA or MPS, in the device's stream (events), so an interval covers the
    device's work without stalling it: only reading an interval waits, and only for its end mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> tuple[float, Any]:
        return time.perf_counter(), _event(self.device)

    @staticmethod
    def seconds(start: tuple[float, Any], end: tuple[float, Any]) -> float:
        if start[1] is not None and end[1] is not None:
            end[1].synchronize()
            return start[1].elapsed_time(end[1]) / 1000.0
        return end[0] - start[0]


def reset_peak_memory() -> None:
    """Start the CUDA memory high-water mark afresh: a run measures its own peak, not an earlier run's in the same
    process (the benchmark's seeds, a sweep's trials)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def release_memory() -> None:
    """Give back the GPU memory a finished run held: Python's cycles first (tensors caught in them), then the cached
    blocks of CUDA's allocator. Host memory needs no help: Python frees it (and a collection costs 0.2 s)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def peak_memory_mb(device: torch.device) -> float | None:
    """The device's memory high-water mark for this process in MB: CUDA's peak allocation; on MPS the memory
    Metal's driver holds for the process (its pool only grows, so it bounds the peak); None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return None


def steady_throughput(rates: list[float | None]) -> float | None:
    """Images/s of a run: the median over its epochs after the first, which pays for cuDNN's autotuning and the
    allocator's growth (the first alone when it is the only one). The Lightning run and the bare loop both report
    this, so their ratio compares loops, not warm-ups."""
    measured = [rate for rate in rates if rate]
    steady = measured[1:] or measured
    return float(sorted(steady)[len(steady) // 2]) if steady else None


def cudnn_autotune(deterministic: bool) -> bool:
    """Whether cuDNN times its algorithms for each new shape and keeps the fastest: what the Trainer is given
    (`benchmark=`) and the bare loop sets, so both run the same kernels. Off for deterministic runs."""
    return not deterministic
