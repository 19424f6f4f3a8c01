"""What this machine is: the rank's own accelerator, read through torch's public device queries only.

Nothing here touches a GPU other than the rank's own (LOCAL_RANK under torchrun, SLURM or Lightning's launcher): no
`torch.cuda.is_bf16_supported()` (it allocates a tensor on the current device, GPU 0 for every rank before
Lightning sets the device) and no memory query of another index. Tests emulate every kind of device by patching
`torch.cuda`, `torch.backends.mps`, `torch.mps` and `torch.version`.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

NVIDIA_PROC = Path("/proc/driver/nvidia")  # what the kernel driver says, whatever torch can see


@dataclass(frozen=True, kw_only=True)
class Device:
    """One accelerator (or the CPU) as the plan sees it.

    kind: "cuda" (NVIDIA), "rocm" (AMD through torch's HIP build, still `torch.cuda`), "mps" (Apple silicon) or
    "cpu". capability: NVIDIA's compute capability. arch: "sm_75", "gfx90a", ... free_bytes / total_bytes: memory
    the device reports (None where it reports none).
    """

    kind: str
    index: int
    name: str
    capability: tuple[int, int] | None = None
    arch: str | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.index) if self.kind in ("cuda", "rocm") else torch.device(self.kind)

    def describe(self) -> str:
        """'Tesla T4 (cuda:0, compute capability 7.5, 15.0 GB)'; the CPU by its name alone."""
        if self.kind == "cpu":
            return self.name
        details = [str(self.torch_device)]
        if self.capability is not None:
            details.append(f"compute capability {self.capability[0]}.{self.capability[1]}")
        elif self.arch:
            details.append(self.arch)
        if self.total_bytes:
            details.append(f"{self.total_bytes / 2**30:.1f} GB")
        return f"{self.name} ({', '.join(details)})"


def local_rank() -> int:
    """This process's index among the processes of its machine (0 when it is the only one)."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def is_rocm() -> bool:
    return getattr(torch.version, "hip", None) is not None


def cpu_name() -> str:
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def apple_chip() -> str:
    """'Apple M2 Pro' on a Mac (from sysctl), else a generic name."""
    if sys.platform == "darwin":
        try:
            brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            if brand:
                return brand
        except (OSError, subprocess.SubprocessError):
            pass
    return "Apple silicon"


def probe_gpu(index: int, with_memory: bool = True) -> Device:
    """The CUDA or ROCm device `index` (the rank's own); its free memory only when asked (it creates a context)."""
    properties = torch.cuda.get_device_properties(index)
    name = torch.cuda.get_device_name(index)
    free = total = None
    total = getattr(properties, "total_memory", None)
    if with_memory:
        free, total = torch.cuda.mem_get_info(index)
    if is_rocm():
        arch = str(getattr(properties, "gcnArchName", "") or "").split(":")[0] or None
        return Device(kind="rocm", index=index, name=name, arch=arch, total_bytes=total, free_bytes=free)
    major, minor = torch.cuda.get_device_capability(index)
    return Device(kind="cuda", index=index, name=name, capability=(major, minor), arch=f"sm_{major}{minor}",
                  total_bytes=total, free_bytes=free)


def probe_mps() -> Device:
    """The Apple-silicon GPU; its memory is the unified memory Metal recommends for one process."""
    total = free = None
    if hasattr(torch.mps, "recommended_max_memory"):
        total = int(torch.mps.recommended_max_memory())
        free = total - int(torch.mps.current_allocated_memory())
    return Device(kind="mps", index=0, name=f"{apple_chip()} GPU (MPS)", total_bytes=total, free_bytes=free)


def probe_cpu() -> Device:
    return Device(kind="cpu", index=0, name=cpu_name())


@dataclass(frozen=True)
class NvidiaDriver:
    """What the NVIDIA kernel driver reports, independently of torch: how many GPUs and its version."""

    gpus: int
    version: str | None


def nvidia_driver(proc: Path = NVIDIA_PROC) -> NvidiaDriver | None:
    """The kernel driver's view (Linux), or None where there is no NVIDIA driver."""
    gpus = proc / "gpus"
    if not gpus.is_dir():
        return None
    version = None
    try:
        found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([\d.]+)", (proc / "version").read_text())
        version = found.group(1) if found else None
    except OSError:
        pass
    return NvidiaDriver(len([entry for entry in gpus.iterdir()]), version)


def free_memory(device: Device) -> tuple[int | None, int | None]:
    """(free, total) bytes on `device` now, cached blocks released first; (None, None) where it reports nothing."""
    if device.kind in ("cuda", "rocm"):
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device.index)
        return int(free), int(total)
    if device.kind == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        torch.mps.empty_cache()
        total = int(torch.mps.recommended_max_memory())
        return total - int(torch.mps.current_allocated_memory()), total
    return None, None
