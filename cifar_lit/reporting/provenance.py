"""What a result was measured on: device, library versions, git commit and command, for every record we write."""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from cifar_lit.hardware import devices
from cifar_lit.reliability.secrets import mask_secrets

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: cifar_lit/reporting/provenance.py


def device_description(device: torch.device | str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA (or ROCm) device, 'Apple M2 GPU (MPS)', else the CPU with its cores."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device is not None and device.type == "mps":
        return f"{devices.apple_chip()} GPU (MPS)"
    return devices.cpu_name()


def versions() -> dict[str, Any]:
    import numpy
    import pytorch_lightning
    import torchmetrics
    import torchvision

    import cifar_lit

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cifar_lit": cifar_lit.__version__,
    }


def git_commit() -> str | None:
    """HEAD of the project checkout, with '-dirty' when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if status else head


def command_line(argv: list[str] | None = None, program: str | None = None) -> str:
    """The command as a user would type it, secrets masked (reliability/secrets.py); `program` may hold several
    words ("-m cifar_lit.bench")."""
    program = program or Path(sys.argv[0]).name
    return mask_secrets(shlex.join(["python", *program.split(), *(sys.argv[1:] if argv is None else argv)]))


def shell_command(program: str, *args: object) -> str:
    """`python <program> args...` quoted for a POSIX shell, so a path with a space pastes as one word."""
    return shlex.join(["python", program, *(str(arg) for arg in args)])


def record_stem(name: str, device: str, date: str, label: str | None = None) -> str:
    """'<name>-<device slug>[-<label>]-<date>': how the records under benchmarks/results/ are named."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    return "-".join(part for part in (name, slug, label, date) if part)


def write_record(out: Path | str, name: str, record: dict[str, Any], label: str | None = None) -> Path:
    """`record` as `<out>/<record_stem>.json` (its "device" and "date" name it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record_stem(name, record['device'], record['date'], label)}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
