"""Which device, how many and in which precision a run trains: the one place that decides it from the machine."""

from __future__ import annotations

from typing import Any

import torch

from cifar_lit.reliability.errors import ConfigError


def resolve_hardware(config: dict[str, Any]) -> tuple[str, int | str, str]:
    """(accelerator, devices, precision) from --gpus or --accelerator/--devices, and --precision or its default."""
    accelerator, devices = config["accelerator"], config["devices"]
    gpus = config["gpus"]
    if gpus is not None:
        if gpus > 0 and torch.cuda.device_count() < gpus:
            raise ConfigError(
                f"--gpus {gpus} asks for {gpus} GPU(s), but PyTorch sees {torch.cuda.device_count()}. Use --gpus 0 "
                "to train on the CPU, or run where the GPUs are visible (check CUDA_VISIBLE_DEVICES)."
            )
        accelerator, devices = ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    elif accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    on_gpu = accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    precision = config["precision"] or ("bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true")
    return accelerator, devices, precision


def single_device(gpus: int | None) -> torch.device:
    """The device of a one-process job on a trained network (evaluate.py): chosen by the same rules as training,
    from `--gpus` (None: a GPU when there is one)."""
    accelerator, _, _ = resolve_hardware({"gpus": gpus, "accelerator": "auto", "devices": 1, "precision": None})
    return torch.device("cuda" if accelerator in ("gpu", "cuda") else accelerator)
