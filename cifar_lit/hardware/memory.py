"""How much device memory a run needs, and one clear error when a device runs out.

The estimate is arithmetic, not a measurement: weights, gradients, momentum (and an EMA copy) in fp32, the
half-precision copies autocast makes of the weights, the activations autograd keeps for the backward pass (every
layer's output, counted once per image by running the network on PyTorch's meta device, which allocates nothing),
the data set when it lives on the device, and a fixed margin for cuDNN's workspaces and the allocator's slack.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cifar_lit.hardware.devices import Device, free_memory
from cifar_lit.models import build_model
from cifar_lit.reliability.errors import UserError

GB = 2**30
WORKSPACE_MARGIN = 512 * 2**20  # cuDNN workspaces, allocator fragmentation, the CUDA context's own use
BACKWARD_PEAK = 1.25  # saved activations, plus the activation gradients alive at once during the backward pass


class DeviceOutOfMemory(UserError):
    """The device ran out of memory during fit or test."""


@functools.lru_cache(maxsize=16)
def network_sizes(model: str, width: int, num_classes: int) -> tuple[int, int]:
    """(parameter count, activation elements autograd saves per training image) of the network `model` of `width`:
    a forward pass on the meta device with a saved-tensors hook that counts what the backward pass will need."""
    with torch.device("meta"):
        network = build_model(model, num_classes, width)
        parameters = {id(p) for p in network.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if id(tensor) not in parameters:
                saved[id(tensor)] = tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            network(torch.empty(1, 3, 32, 32))
    return sum(p.numel() for p in network.parameters()), sum(saved.values())


def element_bytes(precision: str) -> int:
    return 2 if precision.startswith(("bf16", "16")) else 8 if precision.startswith("64") else 4


@dataclass(frozen=True)
class MemoryEstimate:
    model_bytes: int
    activation_bytes: int
    data_bytes: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.activation_bytes + self.data_bytes + WORKSPACE_MARGIN

    def describe(self) -> str:
        return (f"~{self.total / GB:.1f} GB (network and optimizer {self.model_bytes / GB:.2f}, activations "
                f"{self.activation_bytes / GB:.2f}, data {self.data_bytes / GB:.2f}, workspace "
                f"{WORKSPACE_MARGIN / GB:.2f})")


def estimate(model: str, width: int, num_classes: int, *, batch_size: int, eval_batch_size: int, precision: str,
             ema: bool, data_bytes: int) -> MemoryEstimate:
    """What one training process needs on its device (see the module's docstring); `data_bytes` is 0 when the data
    set stays in host memory."""
    parameters, kept_per_image = network_sizes(model, width, num_classes)
    fp32 = 4
    model = parameters * fp32 * (3 + (1 if ema else 0))  # weights, gradients, momentum (+ EMA)
    if precision.endswith("mixed"):
        model += parameters * 2  # autocast's half-precision copies of the weights
    # Training keeps what autograd saves, plus the gradients alive at the backward pass's peak; evaluation holds
    # about two layers' worth at a time.
    activations = max(int(kept_per_image * batch_size * BACKWARD_PEAK), kept_per_image * eval_batch_size // 8)
    activations *= element_bytes(precision)
    return MemoryEstimate(model, activations, data_bytes)


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, ROCm), or the RuntimeError MPS raises ("MPS backend out of memory")."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@contextmanager
def out_of_memory_as_error(device: Device, needed: MemoryEstimate | None, *, batch_size: int, eval_batch_size: int,
                           data_on_device: bool | None) -> Iterator[None]:
    """Turn running out of device memory anywhere in the block into one DeviceOutOfMemory paragraph."""
    try:
        yield
    except Exception as error:
        if isinstance(error, UserError) or not is_out_of_memory(error):
            raise
        free, total = free_memory(device)
        raise DeviceOutOfMemory(out_of_memory_message(
            device.describe(), free_bytes=free, total_bytes=total, needed=needed, batch_size=batch_size,
            eval_batch_size=eval_batch_size, data_on_device=bool(data_on_device))) from None


def out_of_memory_message(device: str, *, free_bytes: int | None, total_bytes: int | None,
                          needed: MemoryEstimate | None, batch_size: int, eval_batch_size: int,
                          data_on_device: bool) -> str:
    free = "" if free_bytes is None else f"{free_bytes / GB:.1f} GB free"
    total = "" if total_bytes is None else f" of {total_bytes / GB:.1f} GB"
    state = f" ({free}{total} now)" if free else ""
    lower = [f"--batch-size (now {batch_size})", f"--eval-batch-size (now {eval_batch_size})"]
    if data_on_device:
        lower.append("or keep the data set in host memory with --no-data-on-device")
    return (
        f"{device} ran out of memory{state}. This run needs about {needed.describe() if needed else 'more'}. "
        "Another process or notebook "
        f"may be holding memory on it (nvidia-smi lists them; in a notebook, restart the kernel). Lower "
        f"{', '.join(lower)}, then run again; checkpoints already written are intact and `--resume last` carries on "
        "from the last one."
    )
