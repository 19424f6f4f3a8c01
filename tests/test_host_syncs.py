"""Nothing in the training step makes the host wait for the device, Lightning's loop included (issue: speed).

The fast path runs on the CPU under a mode that counts every tensor-to-host conversion (cifar_lit.bench.host_sync)
between the ends of two training steps that neither log nor checkpoint; on a GPU each would be a synchronization.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_FLAGS, with_extra_callback

from cifar_lit.bench.host_sync import HostSyncCounter
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier

# 10 training steps per epoch: with --log-every-n-steps 50, steps 3 to 8 neither log nor checkpoint
FIRST, LAST = 2, 8


class CountBetweenSteps(pl.Callback):
    """Counts host conversions from the end of step FIRST to the end of step LAST."""

    def __init__(self) -> None:
        self.counter: HostSyncCounter | None = None
        self.counted: HostSyncCounter | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == LAST and self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.counted, self.counter = self.counter, None
        if trainer.global_step == FIRST:
            self.counter = HostSyncCounter()
            self.counter.__enter__()


def count_between_steps(monkeypatch, folder, tmp_path, *flags: str) -> HostSyncCounter:
    counting = CountBetweenSteps()
    with_extra_callback(monkeypatch, counting)
    assert main([*TINY_FLAGS, "--data-dir", str(folder), "--logdir", str(tmp_path / "logs"), "--width", "8",
                 "--max-epochs", "1", "--target-acc", "1.0", "--log-every-n-steps", "50", *flags]) == 0
    assert counting.counted is not None, "the counting window never closed"
    return counting.counted


@pytest.mark.parametrize("flags", [[], ["--progress-bar"], ["--cutout", "8", "--flip-tta"],
                                   ["--precision", "16-mixed", "--width", "2"]],  # fp16 backward is slow on a CPU
                         ids=["fast-path", "with-progress-bar", "cutout-and-tta", "fp16-loss-scaling"])
def test_no_host_conversion_between_two_training_steps(image_folder, tmp_path, monkeypatch, flags):
    counted = count_between_steps(monkeypatch, image_folder, tmp_path, *flags)
    assert counted.total == 0, dict(counted.by_site)


def test_the_count_sees_a_host_sync_in_the_step(image_folder, tmp_path, monkeypatch):
    original = CIFARClassifier.training_step

    def reads_the_loss(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        loss.item()
        return loss

    monkeypatch.setattr(CIFARClassifier, "training_step", reads_the_loss)
    counted = count_between_steps(monkeypatch, image_folder, tmp_path)
    assert counted.by_kind["item"] == LAST - FIRST


def test_each_kind_of_conversion_is_counted_and_non_blocking_copies_are_not():
    value = torch.tensor([1.5])
    with HostSyncCounter() as counter:
        value.item(), bool(value), float(value), int(value), value.tolist(), value.numpy(), value.cpu()
        f"{value[0]:.1f}"
        value.to(torch.float64), value.to("cpu")  # nothing moves between devices: not a wait
        torch.empty(1).copy_(value, non_blocking=True)
    assert counter.by_kind == {"item": 1, "__bool__": 1, "__float__": 1, "__int__": 1, "tolist": 1, "numpy": 1,
                               "cpu": 1, "__format__": 1}
