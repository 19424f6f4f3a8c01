"""The hardware plan: what a run gets on this machine, decided in one place from what the machine is.

Accelerator and devices, precision, whether torch.compile can generate code here, channels_last, fused or foreach
SGD, and whether the data set lives on the device. An option the user set (on the command line or in a config
file) always wins; the plan fills in the rest and says why in one line per decision. One exception: a config file's
`compile: true` (a preset) is turned off where Inductor cannot generate code, with a log line, while `--compile` on
the command line on such a device is refused at start-up. The plan is logged as a run's first lines, stored in
summary.json, and printed alone by `train.py --dry-run`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cifar_lit.hardware.devices import (
    Device,
    cuda_available,
    local_rank,
    mps_available,
    nvidia_driver,
    probe_cpu,
    probe_gpu,
    probe_mps,
)
from cifar_lit.hardware.memory import GB, MemoryEstimate, estimate
from cifar_lit.models import BASE_WIDTH, DEFAULT_MODEL, build_model
from cifar_lit.reliability.errors import ConfigError

PLANNED = ("precision", "compile", "channels_last", "fused_sgd", "data_on_device")
# Left to the plan unless the user sets them (None in the config); compile is asked for, and the plan may refuse it.
PLAN_DECIDES = ("precision", "channels_last", "fused_sgd", "data_on_device")
# ROCm architectures with bf16 matrix units (MFMA on CDNA 1-3, WMMA on RDNA 3 and later).
ROCM_BF16_ARCHS = ("gfx908", "gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")
# The oldest NVIDIA driver each CUDA major version runs on (minor-version compatibility).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
OLDER_GPU_WHEEL = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126"
KEEP_PREINSTALLED = "on Colab or Kaggle keep the preinstalled torch: pip install -e . (without -c constraints.txt)"
DATA_SHARE = 0.9  # of the free memory, at most, for the data set and the run together
ONEDNN_NHWC_MIN_CHANNELS = 8  # measured: below it oneDNN 3.12's AVX2 strided 1x1 backward fails in NHWC


class HardwareError(ConfigError):
    """This machine cannot run the installed torch on its GPU, or cannot give what a flag asked for."""


@dataclass(frozen=True, kw_only=True)
class HardwareRequest:
    """What a run asks of the machine: the options the plan reads, by name and type. None leaves a choice to the
    plan; `compile_is_a_flag` tells `--compile` on the command line (refused where it cannot work) from a preset's
    `compile: true` (turned off with a log line)."""

    gpus: int | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None
    compile: bool = False
    compile_is_a_flag: bool = False
    channels_last: bool | None = None
    fused_sgd: bool | None = None
    data_on_device: bool | None = None
    model: str = DEFAULT_MODEL
    width: int = BASE_WIDTH
    num_classes: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1000
    ema: bool = False


@dataclass(kw_only=True)
class HardwarePlan:
    """What a run gets (see the module docstring); `reasons` says why, per decision."""

    accelerator: str  # Lightning's: "cuda", "mps" or "cpu"
    devices: int | str
    device: Device
    precision: str
    compile: bool
    channels_last: bool
    fused_sgd: bool
    data_on_device: bool
    memory: MemoryEstimate | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    def decided(self) -> dict[str, Any]:
        """The planned values by option name, to put in place of the ones a run left to the plan."""
        return {name: getattr(self, name) for name in PLANNED}

    def memory_warning(self, batch_size: int) -> str | None:
        """One `warning:` line when the run's estimate exceeds what the device has free, naming what to lower; None
        when it fits or the device reports no free memory. Only a warning: the estimate is not exact."""
        free, memory = self.device.free_bytes, self.memory
        if memory is None or free is None or memory.total <= free:
            return None
        fixed = memory.total - memory.activation_bytes  # what does not shrink with the batch
        fits = int(batch_size * (free - fixed) / memory.activation_bytes) if free > fixed else 0
        lower = [f"--batch-size (now {batch_size}; about {2 ** (fits.bit_length() - 1)} would fit)" if fits
                 else f"--batch-size (now {batch_size})"]
        if memory.data_bytes:
            lower.append("keep the data set in host memory with --no-data-on-device")
        return (f"warning: this run needs {memory.describe()} on {self.device.name}, which has {free / GB:.1f} GB "
                f"free: it will probably run out of memory. Lower {' or '.join(lower)}.")

    def lines(self) -> list[str]:
        lines = [f"Hardware plan: {self.device.describe()}, {self.devices} device(s)"]
        for name in PLANNED:
            value = getattr(self, name)
            shown = value if isinstance(value, str) else ("on" if value else "off")
            lines.append(f"  {name:<15} {shown}: {self.reasons.get(name, '')}")
        if self.memory is not None:
            free = self.device.free_bytes
            room = f", {free / GB:.1f} GB free" if free is not None else ""
            lines.append(f"  {'memory':<15} needs {self.memory.describe()}{room}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        record = {name: getattr(self, name) for name in ("accelerator", "devices", *PLANNED)}
        record["device"] = asdict(self.device)
        record["device"]["capability"] = list(self.device.capability) if self.device.capability else None
        record["memory_needed_bytes"] = self.memory.total if self.memory is not None else None
        record["reasons"] = dict(self.reasons)
        return record


# ------------------------------------------------------------------------------------------------ accelerator


def choose_accelerator(request: HardwareRequest) -> tuple[str, int | str]:
    """(Lightning accelerator, devices) from --gpus or --accelerator/--devices; `auto` picks CUDA/ROCm, then MPS
    (as Lightning's own `auto` does), then the CPU. Refuses what this machine cannot give."""
    accelerator, devices, gpus = request.accelerator, request.devices, request.gpus
    if gpus is not None:
        check_gpus_alone(gpus, accelerator, devices)
        if gpus == 0:
            return "cpu", 1
        if not cuda_available():
            raise HardwareError(missing_gpu_message(gpus))
        if torch.cuda.device_count() < gpus:
            raise HardwareError(
                f"--gpus {gpus} asks for {gpus} GPU(s), but PyTorch sees {torch.cuda.device_count()}. Use --gpus "
                f"{torch.cuda.device_count()} or fewer, or run where the GPUs are visible (check CUDA_VISIBLE_DEVICES)."
            )
        return "cuda", gpus
    if accelerator == "auto":
        return ("cuda" if cuda_available() else "mps" if mps_available() else "cpu"), devices
    if accelerator in ("gpu", "cuda"):
        if cuda_available():
            return "cuda", devices
        if accelerator == "gpu" and mps_available():
            return "mps", devices
        raise HardwareError(missing_gpu_message(None, f"--accelerator {accelerator}"))
    if accelerator == "mps" and not mps_available():
        raise HardwareError("--accelerator mps asks for an Apple-silicon GPU, but PyTorch sees none (it needs a Mac "
                            "with Apple silicon and macOS 12.3 or newer). Use --accelerator cpu, or leave it at auto.")
    return accelerator, devices


def check_gpus_alone(gpus: int, accelerator: str, devices: int | str) -> None:
    """--gpus N stands for --accelerator and --devices: either of those beside it saying otherwise would be
    silently ignored (and recorded in config.yaml as if it had run), so it is refused."""
    means = ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    clashes = []
    if accelerator != "auto" and accelerator not in ((means[0],) if gpus == 0 else ("gpu", "cuda")):
        clashes.append(f"--accelerator {accelerator}")
    if devices != 1 and str(devices) != str(means[1]):
        clashes.append(f"--devices {devices}")
    if clashes:
        raise ConfigError(f"--gpus {gpus} means --accelerator {means[0]} --devices {means[1]}, so "
                          f"{' and '.join(clashes)} beside it would have no effect. Give --gpus alone, or "
                          "--accelerator and --devices without --gpus (e.g. --accelerator cpu --devices 2 for two "
                          "CPU processes).")


def missing_gpu_message(gpus: int | None, asked: str | None = None) -> str:
    """Why PyTorch sees no GPU, and the fix: a Mac's GPU, an NVIDIA driver too old for this torch, hidden GPUs,
    a CPU-only torch, or none at all."""
    asked = asked or f"--gpus {gpus} asks for {gpus} GPU(s)"
    if mps_available():
        return (f"{asked}, but this Mac's GPU is an Apple-silicon GPU, which PyTorch drives as MPS: use "
                "--accelerator mps (or leave --accelerator at auto, which picks it).")
    driver = nvidia_driver()
    if driver is not None and driver.gpus > 0:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None and hidden.strip() in ("", "-1"):
            return (f"{asked}, but CUDA_VISIBLE_DEVICES={hidden!r} hides the {driver.gpus} GPU(s) the NVIDIA driver "
                    "reports. Unset it or list the GPUs to use (CUDA_VISIBLE_DEVICES=0).")
        cuda = torch.version.cuda
        need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
        if cuda and need and driver.version and int(driver.version.split(".")[0]) < need:
            return (f"{asked}, but PyTorch sees none: the NVIDIA driver reports {driver.gpus} GPU(s) with driver "
                    f"{driver.version}, and the installed torch {torch.__version__} is built for CUDA {cuda}, which "
                    f"needs driver {need} or newer. Update the driver, or install a torch built for an older CUDA "
                    f"(`{OLDER_GPU_WHEEL}`, which runs on driver 525 or newer); {KEEP_PREINSTALLED}.")
        if not cuda:
            return (f"{asked}, but the installed torch {torch.__version__} is a CPU-only build, although the NVIDIA "
                    f"driver reports {driver.gpus} GPU(s). Install a CUDA build of torch (`{OLDER_GPU_WHEEL}`); "
                    f"{KEEP_PREINSTALLED}.")
    return (f"{asked}, but PyTorch sees none. Use --gpus 0 to train on the CPU, or run where a GPU is visible "
            "(check CUDA_VISIBLE_DEVICES).")


# ------------------------------------------------------------------------------------------------ the wheel


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether torch's kernels run on a GPU of `capability`: a binary for the same major version and an equal or
    lower minor one, or PTX (compute_XY) it can compile just in time for a newer GPU."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def check_wheel(device: Device) -> None:
    """Refuse at start-up a GPU the installed torch has no kernels for (today's default wheels dropped sm_60 and
    sm_70: P100 and V100), instead of a traceback at its first kernel."""
    arch_list = list(torch.cuda.get_arch_list())
    if not arch_list:
        return
    if device.kind == "cuda" and device.capability and not arch_supported(device.capability, arch_list):
        major, minor = device.capability
        raise HardwareError(
            f"The installed torch {torch.__version__} (built for CUDA {torch.version.cuda}) has no kernels for "
            f"{device.name}, compute capability {major}.{minor}: it supports {', '.join(arch_list)}, so its first "
            f"kernel would fail. Install a torch built for this GPU, e.g. `{OLDER_GPU_WHEEL}` (sm_50 to sm_90: "
            f"P100, V100, T4 and newer), then this project without the lock file (pip install -e .); "
            f"{KEEP_PREINSTALLED}."
        )
    if device.kind == "rocm" and device.arch and not any(arch.startswith(device.arch) for arch in arch_list):
        raise HardwareError(
            f"The installed torch {torch.__version__} (ROCm {torch.version.hip}) has no kernels for {device.name} "
            f"({device.arch}): it supports {', '.join(arch_list)}. Install the ROCm build of torch for this card "
            "(see pytorch.org's install selector), then this project without the lock file (pip install -e .)."
        )


# ------------------------------------------------------------------------------------------------ decisions


def choose_precision(device: Device) -> tuple[str, str]:
    if device.kind == "cuda" and device.capability:
        cap = f"{device.capability[0]}.{device.capability[1]}"
        if device.capability >= (8, 0):
            return "bf16-mixed", f"native bf16 tensor cores (compute capability {cap} >= 8.0)"
        if device.capability >= (6, 0):
            units = "tensor cores" if device.capability >= (7, 0) else "arithmetic"
            return "16-mixed", (f"bf16 is only emulated below compute capability 8.0 ({cap} here); fp16 {units} "
                                "with loss scaling")
        return "32-true", f"no fast half precision below compute capability 6.0 ({cap} here)"
    if device.kind == "rocm":
        if device.arch and device.arch.startswith(ROCM_BF16_ARCHS):
            return "bf16-mixed", f"bf16 matrix units ({device.arch})"
        return "16-mixed", f"no bf16 matrix units on {device.arch or 'this card'}: fp16 with loss scaling"
    if device.kind == "mps":
        return "32-true", ("fp32: mixed precision on MPS is not verified for this recipe (pass --precision "
                           "16-mixed to try it)")
    return "32-true", "fp32 on the CPU"


def cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++", "cl"):
        if name and shutil.which(name):
            return name
    return None


def compile_support(device: Device) -> tuple[bool, str]:
    """Whether Inductor can generate code for `device`, and why (not)."""
    if device.kind in ("cuda", "rocm"):
        if importlib.util.find_spec("triton") is None:
            where = "on Windows" if sys.platform == "win32" else "in this environment"
            return False, f"Triton is not installed {where}, so Inductor has no GPU code generator"
        if device.kind == "cuda" and device.capability and device.capability < (7, 0):
            cap = f"{device.capability[0]}.{device.capability[1]}"
            return False, f"Triton needs compute capability 7.0 or newer; {device.name} has {cap}"
        return True, "Inductor generates Triton kernels for this GPU"
    if device.kind == "mps":
        return False, "Inductor's Metal backend is experimental and not verified for this step"
    compiler = cxx_compiler()
    if compiler is None:
        return False, "no C++ compiler found (Inductor's CPU backend needs one)"
    return True, f"Inductor's C++ backend ({compiler})"


def narrowest_strided_pointwise(model: str, width: int) -> int | None:
    """The fewest input channels of any strided 1x1 convolution (a ResNet's downsampling shortcut) in the network
    `model` of `width`, built on the meta device; None when it has none."""
    with torch.device("meta"):
        network = build_model(model, 10, width)
    return min((conv.in_channels for conv in network.modules() if isinstance(conv, torch.nn.Conv2d)
                and conv.kernel_size == (1, 1) and conv.stride != (1, 1)), default=None)


def cpu_layout_hangs(request: HardwareRequest) -> str | None:
    """Why channels_last would crash or hang this network on the CPU, or None. oneDNN's AVX2 kernel of a strided 1x1
    convolution's weight gradient fails in NHWC below 8 input channels (docs/cpu_channels_last.md)."""
    narrowest = narrowest_strided_pointwise(request.model, request.width)
    if narrowest is None or narrowest >= ONEDNN_NHWC_MIN_CHANNELS:
        return None
    return (f"oneDNN's NHWC backward of a strided 1x1 convolution crashes or hangs with fewer than "
            f"{ONEDNN_NHWC_MIN_CHANNELS} input channels on AVX2 CPUs, and --width {request.width} gives "
            f"{request.model}'s shortcut {narrowest}")


def choose_channels_last(device: Device) -> tuple[bool, str]:
    if device.kind == "cuda" and device.capability and device.capability >= (7, 0):
        return True, "tensor-core convolutions run NHWC"
    if device.kind == "cuda":
        return False, "no tensor cores: NHWC buys nothing"
    if device.kind == "rocm":
        return False, "MIOpen's default layout is NCHW"
    if device.kind == "mps":
        return False, "NCHW is MPS's native layout"
    return True, "oneDNN's convolutions run NHWC"


def choose_fused_sgd(device: Device, precision: str) -> tuple[bool, str]:
    if device.kind in ("cuda", "rocm"):
        return True, "one kernel for the whole update (and loss scaling without a host sync)"
    if precision == "16-mixed":
        return True, "loss scaling without a host sync per step (GradScaler syncs for a foreach optimizer)"
    return False, "foreach SGD"


def plan_hardware(request: HardwareRequest, data_bytes: int = 0, with_memory: bool = True) -> HardwarePlan:
    """The plan for `request` on this machine. `data_bytes`: what the data set takes on the device; `with_memory`:
    read the GPU's free memory (creates a CUDA context on the rank's own device)."""
    accelerator, devices = choose_accelerator(request)
    if accelerator == "cuda":
        device = probe_gpu(local_rank(), with_memory)
        check_wheel(device)
    elif accelerator == "mps":
        device = probe_mps()
    else:
        device = probe_cpu()
    reasons: dict[str, str] = {}

    def chosen(name: str, asked: Any, planned: tuple[Any, str]) -> Any:
        if asked is not None:
            reasons[name] = "as the config or a flag sets it"
            return asked
        value, reasons[name] = planned
        return value

    precision = chosen("precision", request.precision, choose_precision(device))
    if precision.startswith("bf16") and device.kind == "cuda" and device.capability and device.capability < (8, 0):
        reasons["precision"] += "; bf16 is emulated in fp32 on this GPU, 16-mixed is faster"
    can_compile, why = compile_support(device)
    if request.compile and not can_compile and request.compile_is_a_flag:
        raise HardwareError(f"--compile cannot work on {device.name}: {why}. Drop --compile (the run is then eager).")
    compile_ = request.compile and can_compile
    reasons.update(compile=why if compile_ else f"the config asks for it, but {why}: eager instead" if request.compile
                   else "not asked for (--compile or a compiling preset turns it on)")
    channels_last = chosen("channels_last", request.channels_last, choose_channels_last(device))
    hangs = cpu_layout_hangs(request) if device.kind == "cpu" and channels_last else None
    if hangs and request.channels_last:
        raise HardwareError(f"--channels-last cannot work here: {hangs}. Drop --channels-last, or use --width "
                            f"{ONEDNN_NHWC_MIN_CHANNELS} or more.")
    if hangs:
        channels_last, reasons["channels_last"] = False, f"NCHW: {hangs}"
    fused_sgd = chosen("fused_sgd", request.fused_sgd, choose_fused_sgd(device, precision))

    def memory_for(data: int) -> MemoryEstimate:
        return estimate(request.model, request.width, request.num_classes, batch_size=request.batch_size,
                        eval_batch_size=request.eval_batch_size, precision=precision, ema=request.ema,
                        data_bytes=data)

    memory = memory_for(data_bytes)
    data_on_device = chosen("data_on_device", request.data_on_device, place_data(device, memory))
    if not data_on_device:
        memory = memory_for(0)
    return HardwarePlan(accelerator=accelerator, devices=devices, device=device, precision=precision,
                        compile=compile_, channels_last=channels_last, fused_sgd=fused_sgd,
                        data_on_device=data_on_device, memory=memory, reasons=reasons)


def place_data(device: Device, memory: MemoryEstimate) -> tuple[bool, str]:
    """Keep the uint8 data set on the device when it fits there beside the run."""
    size = f"{memory.data_bytes / GB:.2f} GB of uint8 images"
    if device.kind == "cpu":
        return True, f"{size} in host memory (the CPU is the device)"
    if device.free_bytes is None:
        return True, f"{size}; the device reports no free memory, so it is assumed to fit"
    if memory.total <= DATA_SHARE * device.free_bytes:
        return True, f"{size}: fits beside the run in {device.free_bytes / GB:.1f} GB free"
    return False, (f"{size} and the run need {memory.total / GB:.1f} GB, more than {DATA_SHARE:.0%} of the "
                   f"{device.free_bytes / GB:.1f} GB free: batches are copied from host memory instead")


def single_device(gpus: int | None) -> torch.device:
    """The device of a one-process job on a trained network (evaluate.py): chosen by the same rules as training,
    from `--gpus` (None: a GPU, or a Mac's MPS, when there is one)."""
    accelerator, _ = choose_accelerator(HardwareRequest(gpus=gpus))
    if accelerator == "cuda":
        device = probe_gpu(local_rank(), with_memory=False)
        check_wheel(device)
        return device.torch_device
    return torch.device(accelerator)
