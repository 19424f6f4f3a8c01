"""The hardware plan on the GPUs people train on, each emulated on the CPU by patching torch's device queries."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_FLAGS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lit.hardware import devices, plan, timing
from cifar_lit.hardware.memory import network_sizes
from cifar_lit.reporting.provenance import device_description
from cifar_lit.run import trainer as trainer_module
from cifar_lit.run.config import parse_options
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.optim import build_sgd

GB = 2**30
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # today's default wheel (constraints.txt)
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]

# name -> (kind, device name, capability or ROCm arch, memory GB)
GPUS = {
    "T4": ("cuda", "Tesla T4", (7, 5), 15),
    "P100": ("cuda", "Tesla P100-PCIE-16GB", (6, 0), 16),
    "V100": ("cuda", "Tesla V100-SXM2-16GB", (7, 0), 16),
    "RTX 2060": ("cuda", "NVIDIA GeForce RTX 2060", (7, 5), 6),
    "RTX 2080 Ti": ("cuda", "NVIDIA GeForce RTX 2080 Ti", (7, 5), 11),
    "RTX 3090": ("cuda", "NVIDIA GeForce RTX 3090", (8, 6), 24),
    "RTX 4090": ("cuda", "NVIDIA GeForce RTX 4090", (8, 9), 24),
    "A100": ("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40),
    "H100": ("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 80),
    "H200": ("cuda", "NVIDIA H200", (9, 0), 141),
    "MI250X": ("rocm", "AMD Instinct MI250X", "gfx90a", 64),
    "RX 6900 XT": ("rocm", "AMD Radeon RX 6900 XT", "gfx1030", 16),
    "Apple M2": ("mps", None, None, 16),
    "CPU": ("cpu", None, None, None),
}
# name -> (precision, compile possible, channels_last, fused SGD)
EXPECTED = {
    "T4": ("16-mixed", True, True, True),
    "P100": ("16-mixed", False, False, True),
    "V100": ("16-mixed", True, True, True),
    "RTX 2060": ("16-mixed", True, True, True),
    "RTX 2080 Ti": ("16-mixed", True, True, True),
    "RTX 3090": ("bf16-mixed", True, True, True),
    "RTX 4090": ("bf16-mixed", True, True, True),
    "A100": ("bf16-mixed", True, True, True),
    "H100": ("bf16-mixed", True, True, True),
    "H200": ("bf16-mixed", True, True, True),
    "MI250X": ("bf16-mixed", True, False, True),
    "RX 6900 XT": ("16-mixed", True, False, True),
    "Apple M2": ("32-true", False, False, False),
    "CPU": ("32-true", True, True, False),
}


def emulate(monkeypatch, gpu: str, count: int = 1, arch_list: list[str] | None = None, free_gb: float | None = None,
            queried: list[int] | None = None) -> None:
    """Make torch see `count` of the GPU `gpu` (or a Mac, or no GPU), recording which device indexes are asked."""
    kind, name, model, memory = GPUS[gpu]
    gpu_kind = kind in ("cuda", "rocm")
    total = int((memory or 0) * GB)
    free = int((free_gb if free_gb is not None else (memory or 0) * 0.95) * GB)

    def asked(index=None):
        if queried is not None:
            queried.append(0 if index is None else int(index))

    def properties(index=None):
        asked(index)
        return SimpleNamespace(total_memory=total, gcnArchName=f"{model}:sramecc+:xnack-" if kind == "rocm" else "")

    def memory_info(index=None):
        asked(index)
        return free, total

    def capability(index=None):
        asked(index)
        return (9, 0) if kind == "rocm" else model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_kind)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if gpu_kind else 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", memory_info)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    rocm_archs = ["gfx90a", "gfx942", "gfx1030", "gfx1100"]
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list or (rocm_archs if kind == "rocm" else CU126))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda *a, **k: pytest.fail("is_bf16_supported() allocates on GPU 0: the plan never calls it"))
    monkeypatch.setattr(torch.version, "hip", "6.2" if kind == "rocm" else None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: kind == "mps")
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: total, raising=False)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: total - free, raising=False)
    monkeypatch.setattr(devices, "apple_chip", lambda: "Apple M2")
    monkeypatch.setattr(devices, "nvidia_driver", lambda proc=None: None)
    monkeypatch.setattr(plan, "nvidia_driver", lambda proc=None: None)


def config_for(*flags: str, as_flags: bool = False) -> plan.HardwareRequest:
    """What a run with `flags` asks of the machine; `as_flags`: --compile counts as typed on the command line."""
    options = parse_options(list(flags))
    if not as_flags:
        options = dataclasses.replace(options, flags=frozenset())
    return options.hardware_request()


@pytest.mark.parametrize("gpu", list(GPUS))
def test_each_device_gets_its_plan(gpu, monkeypatch):
    emulate(monkeypatch, gpu)
    precision, can_compile, channels_last, fused = EXPECTED[gpu]
    hardware = plan.plan_hardware(config_for("--compile"))
    assert (hardware.precision, hardware.compile, hardware.channels_last, hardware.fused_sgd) == (
        precision, can_compile, channels_last, fused)
    expected_accelerator = {"cuda": "cuda", "rocm": "cuda", "mps": "mps", "cpu": "cpu"}[GPUS[gpu][0]]
    assert hardware.accelerator == expected_accelerator
    assert all(hardware.reasons[name] for name in plan.PLANNED), "every decision says why"
    if GPUS[gpu][1]:
        assert GPUS[gpu][1] in hardware.lines()[0]


def test_no_native_bf16_below_capability_8_is_said(monkeypatch):
    emulate(monkeypatch, "T4")
    hardware = plan.plan_hardware(config_for())
    assert "emulated below compute capability 8.0 (7.5 here)" in hardware.reasons["precision"]
    forced = plan.plan_hardware(config_for("--precision", "bf16-mixed"))
    assert forced.precision == "bf16-mixed" and "16-mixed is faster" in forced.reasons["precision"]


def test_a_flag_or_config_value_wins_over_the_plan(monkeypatch):
    emulate(monkeypatch, "H100")
    hardware = plan.plan_hardware(config_for("--precision", "32-true", "--no-channels-last", "--no-fused-sgd",
                                             "--no-data-on-device"))
    assert (hardware.precision, hardware.channels_last, hardware.fused_sgd, hardware.data_on_device) == (
        "32-true", False, False, False)
    applied = parse_options([]).with_plan(hardware)
    assert applied.run.precision == "32-true" and applied.model.channels_last is applied.data.channels_last is False


@pytest.mark.parametrize("model", ["resnet18", "resnet34", "resnet9"])
def test_the_cpu_keeps_nchw_where_onednn_would_hang_on_a_narrow_strided_pointwise_convolution(monkeypatch, model):
    """oneDNN's AVX2 kernel for the weight gradient of a strided 1x1 convolution in NHWC crashes or hangs below 8
    input channels (docs/cpu_channels_last.md): the ResNets' shortcuts get `width` of them."""
    emulate(monkeypatch, "CPU")
    # Every width from 1 to 16 (the boundary is 8), then every 8th to 64; the other ResNets share resnet18's shapes.
    widths = [*range(1, 17), *range(24, 65, 8)] if model == "resnet18" else (1, 4, 7, 8, 9, 64)
    for width in widths:
        hardware = plan.plan_hardware(config_for("--model", model, "--width", str(width)))
        narrowest = plan.narrowest_strided_pointwise(model, width)
        assert hardware.channels_last is (narrowest is None or narrowest >= 8), (model, width)
    if model != "resnet9":  # no strided 1x1 convolution in it
        narrow = config_for("--model", model, "--width", "4")
        assert "NCHW: oneDNN's NHWC backward" in plan.plan_hardware(narrow).reasons["channels_last"]
        with pytest.raises(plan.HardwareError, match="--channels-last cannot work here"):
            plan.plan_hardware(config_for("--model", model, "--width", "4", "--channels-last"))


@pytest.mark.slow
def test_a_cpu_run_at_width_4_finishes_where_onednn_uses_its_avx2_kernels(image_folder, tmp_path):
    """The hang as it was met, on an AVX2 CPU: a process of its own, because oneDNN reads ONEDNN_MAX_CPU_ISA once,
    when it starts. Before the plan kept NCHW here, this run crashed or spun forever in most tries."""
    flags = [*TINY_FLAGS, "--width", "4", "--batch-size", "8", "--max-epochs", "1", "--limit-train-batches", "5",
             "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs")]
    result = subprocess.run([sys.executable, "train.py", *flags], cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "channels_last   off: NCHW: oneDNN's NHWC backward" in result.stderr


def test_a_preset_that_compiles_runs_eager_where_inductor_cannot_but_the_flag_is_refused(monkeypatch):
    emulate(monkeypatch, "P100")
    preset = Path(__file__).resolve().parent.parent / "configs" / "fast85.yaml"
    hardware = plan.plan_hardware(config_for("--config", str(preset)))
    assert hardware.compile is False
    assert "Triton needs compute capability 7.0" in hardware.reasons["compile"] and "eager" in hardware.reasons[
        "compile"]
    with pytest.raises(plan.HardwareError, match="--compile cannot work on Tesla P100"):
        plan.plan_hardware(config_for("--compile", as_flags=True))


def test_without_triton_compile_is_off_on_a_gpu(monkeypatch):
    emulate(monkeypatch, "A100")
    monkeypatch.setattr(plan.importlib.util, "find_spec", lambda name: None)
    hardware = plan.plan_hardware(config_for("--compile"))
    assert hardware.compile is False and "Triton is not installed" in hardware.reasons["compile"]


def test_a_mac_trains_on_mps_by_default_and_gpus_points_to_it(monkeypatch, capsys, tmp_path):
    emulate(monkeypatch, "Apple M2")
    assert plan.plan_hardware(config_for()).accelerator == "mps"
    assert main(["--gpus", "1", "--logdir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "--accelerator mps" in err and "CUDA_VISIBLE_DEVICES" not in err


def test_each_rank_asks_only_its_own_gpu(monkeypatch):
    queried: list[int] = []
    emulate(monkeypatch, "T4", count=2, queried=queried)
    monkeypatch.setenv("LOCAL_RANK", "1")
    hardware = plan.plan_hardware(config_for("--gpus", "2"))
    assert hardware.device.index == 1 and set(queried) == {1}


def test_a_wheel_without_kernels_for_the_gpu_is_refused_with_the_fix(monkeypatch):
    emulate(monkeypatch, "P100", arch_list=CU130)
    with pytest.raises(plan.HardwareError) as refused:
        plan.plan_hardware(config_for("--gpus", "1"))
    message = str(refused.value)
    assert "Tesla P100" in message and "compute capability 6.0" in message and "sm_75" in message
    assert plan.OLDER_GPU_WHEEL in message and "without -c constraints.txt" in message


def test_arch_matching_follows_cuda_compatibility():
    assert plan.arch_supported((8, 6), ["sm_80"])  # same major, lower minor: binary compatible
    assert not plan.arch_supported((7, 0), ["sm_75", "sm_80"])
    assert plan.arch_supported((12, 0), ["sm_90", "compute_90"])  # PTX compiled just in time
    assert not plan.arch_supported((6, 0), CU130)


def test_a_driver_too_old_for_the_cuda_build_is_named(monkeypatch, capsys, tmp_path):
    emulate(monkeypatch, "CPU")
    monkeypatch.setattr(plan, "nvidia_driver", lambda proc=None: devices.NvidiaDriver(1, "470.82.01"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["--gpus", "1", "--logdir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "driver 470.82.01" in err and "CUDA 13.0" in err and "needs driver 580" in err
    assert plan.OLDER_GPU_WHEEL in err and "CUDA_VISIBLE_DEVICES" not in err


def test_the_kernel_driver_is_read_from_proc(tmp_path):
    proc = tmp_path / "nvidia"
    (proc / "gpus" / "0000:00:04.0").mkdir(parents=True)
    (proc / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n")
    assert devices.nvidia_driver(proc) == devices.NvidiaDriver(1, "535.104.05")
    assert devices.nvidia_driver(tmp_path / "absent") is None


def test_rocm_bf16_only_on_cards_with_bf16_matrix_units(monkeypatch):
    emulate(monkeypatch, "MI250X")
    assert plan.plan_hardware(config_for()).precision == "bf16-mixed"
    emulate(monkeypatch, "RX 6900 XT")
    assert plan.plan_hardware(config_for()).precision == "16-mixed"


def test_the_data_stays_in_host_memory_when_the_gpu_is_nearly_full(monkeypatch):
    emulate(monkeypatch, "T4", free_gb=1.0)
    data = 250 * 2**20
    hardware = plan.plan_hardware(config_for("--gpus", "1"), data_bytes=data)
    assert hardware.data_on_device is False and "copied from host memory" in hardware.reasons["data_on_device"]
    emulate(monkeypatch, "T4", free_gb=14.0)
    assert plan.plan_hardware(config_for("--gpus", "1"), data_bytes=data).data_on_device is True


def test_the_memory_estimate_counts_the_real_network():
    parameters, saved_per_image = network_sizes("resnet18", 64, 10)
    assert parameters == 11_173_962
    assert 500_000 < saved_per_image < 5_000_000  # every stage's activations, a few MB per image in fp32


def test_dry_run_prints_the_plan_and_touches_nothing(monkeypatch, capsys, tmp_path):
    emulate(monkeypatch, "T4")
    logdir, data = tmp_path / "logs", tmp_path / "no-data-here"
    assert main(["--dry-run", "--gpus", "1", "--config", "configs/fast85.yaml", "--logdir", str(logdir),
                 "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "Tesla T4 (cuda:0, compute capability 7.5, 15.0 GB)" in out and "16-mixed" in out
    assert "memory" in out and "GB free" in out and f"{logdir / 'version_0'} (not created now)" in out
    assert not logdir.exists() and not data.exists(), "no run folder, no download"


def test_a_dry_run_whose_plan_does_not_fit_says_so_and_names_what_to_lower(monkeypatch, capsys, tmp_path):
    emulate(monkeypatch, "RTX 2060")
    flags = ["--dry-run", "--gpus", "1", "--logdir", str(tmp_path / "logs"), "--data-dir", str(tmp_path / "none")]
    assert main([*flags, "--batch-size", "4096"]) == 0
    (warning,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert "on NVIDIA GeForce RTX 2060, which has 5.7 GB free: it will probably run out of memory" in warning
    suggested = int(warning.split("about ")[1].split(" would fit")[0])
    assert 64 <= suggested < 4096 and "Lower --batch-size (now 4096; about" in warning
    hardware = plan.plan_hardware(config_for("--gpus", "1", "--batch-size", str(suggested)))
    assert hardware.memory.total <= hardware.device.free_bytes, "the suggested batch fits by the same estimate"
    assert main([*flags, "--batch-size", "256"]) == 0
    assert "warning:" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_run_that_may_not_fit_warns_at_start_and_still_trains(image_folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(plan, "probe_cpu", lambda: devices.Device(kind="cpu", index=0, name="a small CPU",
                                                                      free_bytes=64 * 2**20))
    with caplog.at_level("INFO"):
        assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"),
                     "--max-epochs", "1", "--target-acc", "1.0"]) == 0
    assert any(message.startswith("warning: this run needs") and "a small CPU, which has 0.1 GB free" in message
               for message in caplog.messages), caplog.messages[:12]


@pytest.mark.slow
def test_a_real_run_logs_the_plan_first_and_keeps_it_in_the_summary(image_folder, tmp_path, caplog):
    logdir = tmp_path / "logs"
    with caplog.at_level("INFO"):
        assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--max-epochs", "1",
                     "--target-acc", "1.0"]) == 0
    assert caplog.messages[0].startswith("Hardware plan: CPU")
    summary = json.loads(next(logdir.glob("version_*/summary.json")).read_text())
    assert summary["hardware_plan"]["precision"] == "32-true" and summary["hardware_plan"]["device"]["kind"] == "cpu"
    assert summary["config"]["precision"] == "32-true", "config.yaml and the summary keep what the run ran with"
    assert summary["hardware_plan"]["reasons"]["precision"] == "fp32 on the CPU", "and that the plan chose it"


def test_out_of_memory_is_one_paragraph_and_removes_the_unused_run_folder(image_folder, tmp_path, capsys,
                                                                           monkeypatch):
    def out_of_memory(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CIFARClassifier, "training_step", out_of_memory)
    logdir = tmp_path / "logs"
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--max-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CPU") and "ran out of memory" in err and "Traceback" not in err
    assert "--batch-size (now 30)" in err and "--eval-batch-size (now 50)" in err and "This run needs about" in err
    assert not list(logdir.glob("version_*")), "the run folder of a run that saved nothing is removed"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_out_of_memory_names_the_gpu_and_its_free_memory(monkeypatch):
    emulate(monkeypatch, "T4", free_gb=0.4)
    device = devices.probe_gpu(0)
    needed = plan.estimate("resnet18", 64, 10, batch_size=512, eval_batch_size=2000, precision="16-mixed", ema=False,
                           data_bytes=250 * 2**20)
    from cifar_lit.hardware.memory import DeviceOutOfMemory, out_of_memory_as_error

    with pytest.raises(DeviceOutOfMemory) as stopped, out_of_memory_as_error(device, needed, batch_size=512,
                                                                                      eval_batch_size=2000,
                                                                                      data_on_device=True):
        raise RuntimeError("CUDA error: out of memory")
    message = str(stopped.value)
    assert message.startswith("Tesla T4 (cuda:0") and "0.4 GB free of 15.0 GB" in message
    assert "--no-data-on-device" in message and "nvidia-smi" in message


def poison_allocator(shapes: list[torch.Size]) -> None:
    """Leave freed memory full of 1e29 where the next allocations of these shapes will land (what a GPU's caching
    allocator hands out is just as arbitrary)."""
    for _ in range(4):
        junk = [torch.full(shape, 1e29) for shape in shapes]
        del junk


def test_a_skipped_first_fp16_step_leaves_fused_sgd_momentum_defined():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    reference = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    reference.load_state_dict(model.state_dict())
    inputs = torch.randn(8, 16)
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    poison_allocator([p.shape for p in model.parameters()])
    scaler.scale(model(inputs).sum() * float("inf")).backward()  # overflowing gradients: the step is skipped
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    scaler.scale(model(inputs).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    # The same single good step from scratch, with foreach SGD and no scaling.
    plain = build_sgd(reference, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=False)
    reference(inputs).square().mean().backward()
    plain.step()
    for weight, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.isfinite(weight).all()
        torch.testing.assert_close(weight, expected, rtol=1e-4, atol=1e-6)


def test_mps_timings_and_memory_come_from_the_device(monkeypatch):
    events = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            events.append(self)

        def record(self):
            pass

        def synchronize(self):
            self.synced = True

        def elapsed_time(self, end):
            return 1500.0

    monkeypatch.setattr(torch.mps, "Event", FakeEvent)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * 2**30)
    synced = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append(True))
    watch = timing.Stopwatch(torch.device("mps"))
    start, end = watch.mark(), watch.mark()
    assert len(events) == 2 and timing.Stopwatch.seconds(start, end) == 1.5 and events[1].synced
    assert timing.peak_memory_mb(torch.device("mps")) == 3 * 1024
    timing.synchronize(torch.device("mps"))
    assert synced == [True]
    monkeypatch.setattr(devices, "apple_chip", lambda: "Apple M2")
    assert device_description("mps") == "Apple M2 GPU (MPS)"


@pytest.mark.slow
def test_fp16_overflows_are_skipped_counted_and_not_taken_for_a_failed_run(image_folder, tmp_path, monkeypatch):
    """16-mixed on the CPU (the same Lightning path as on a T4) with a loss scale so large that the first steps'
    gradients overflow in fp16: the scaler skips them and the run trains on."""
    monkeypatch.setattr(trainer_module, "loss_scaler", lambda device: torch.amp.GradScaler(device, init_scale=2.0**26))
    logdir = tmp_path / "logs"
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--precision", "16-mixed",
                 "--width", "2", "--max-epochs", "2", "--target-acc", "1.0"]) == 0  # width 2: fp16 backward is slow
    run_dir = next(logdir.glob("version_*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "16-mixed" and summary["hardware_plan"]["fused_sgd"] is True
    assert 3 <= summary["skipped_steps"] < 20, "2**26 needs several halvings before fp16 gradients fit"
    assert summary["global_steps"] == 20 and summary["test_acc"] is not None
    scalars = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    assert "train/skipped_steps" in scalars
