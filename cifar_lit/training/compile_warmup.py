"""Pay torch.compile's cost before the clock starts: run every batch shape once, then restore the weights.

`CompileWarmup` does it at the start of a fit, with the DataModule's own transforms and the module's own compiled
steps, so neither of the two needs to know the other."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from cifar_lit.hardware.timing import synchronize
from cifar_lit.phases import phase
from cifar_lit.training.compile_cache import cache_counts, cache_report

log = logging.getLogger("cifar_lit")


def compile_options(mode: str = "default") -> dict[str, Any]:
    """How the project compiles: whole graphs only (a graph break raises instead of silently splitting the step),
    static shapes (every shape is compiled during the warm-up), and the given Inductor `mode`."""
    return {"fullgraph": True, "dynamic": False, "mode": mode}


def run_every_shape(model: nn.Module, train_step: Callable[[int], torch.Tensor], eval_step: Callable[[int], Any],
                    *, train_sizes: Iterable[int], eval_sizes: Iterable[int]) -> float:
    """`train_step(size)` (forward; its returned loss is back-propagated) once per training batch size and
    `eval_step(size)` once per evaluation batch size, each on random data.

    The network's weights and batch-norm statistics are restored afterwards and its gradients dropped, so training
    starts from the same state as without the warm-up. Returns the seconds spent (device synchronized).
    """
    device = next(model.parameters()).device
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    start = time.perf_counter()
    was_training = model.training
    model.train()
    for size in sorted(set(train_sizes)):
        train_step(size).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():  # as the Trainer evaluates (inference_mode=False): compiled code is guarded on grad mode
        for size in sorted(set(eval_sizes)):
            eval_step(size)
    model.train(was_training)
    model.load_state_dict(saved)
    synchronize(device)
    return time.perf_counter() - start


def warm_up(module: Any, datamodule: Any, context: Callable[[], Any]) -> float:
    """Compile every batch shape of a run as its loop will run it: each training batch size through the
    DataModule's augmentation and the module's `train_forward` (with its backward), each evaluation batch size
    through `eval_transform` and `eval_forward`. As in Lightning's loop, the batch transforms run outside the
    precision `context` (Lightning calls `on_after_batch_transfer` before entering it) and the steps inside it:
    compiled code is guarded on autocast, so a transform warmed up inside it would be compiled again at the first
    real batch. Returns the seconds spent (`run_every_shape`)."""
    device = next(module.parameters()).device

    def train_step(size: int) -> torch.Tensor:
        images, labels = datamodule.example_batch(size, train=True, device=device)
        inputs = datamodule.train_transform(images, 0, 0)
        with context():
            return module.train_forward(inputs, labels)[0]

    def eval_step(size: int) -> None:
        images, labels = datamodule.example_batch(size, train=False, device=device)
        inputs = datamodule.eval_transform(images)
        with context():
            module.eval_forward(inputs, labels)

    return run_every_shape(module.model, train_step, eval_step, train_sizes=[datamodule.options.batch_size],
                           eval_sizes=datamodule.eval_batch_sizes())


class CompileWarmup(Callback):
    """With `compile` and `compile_warmup` set on the LightningModule, compiles every batch shape of the fit when it
    starts (`warm_up`, in the Trainer's precision). Training and its clock then start with compiled code.

    `seconds` is the warm-up's duration and `cache` what it found in torch.compile's disk cache
    (`compile_cache.cache_report`), both for the run's summary.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cache: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (pl_module.options.compile and pl_module.options.compile_warmup):
            return
        before = cache_counts()
        with phase("warmup"):
            self.seconds = warm_up(pl_module, trainer.datamodule, trainer.precision_plugin.forward_context)
        self.cache = cache_report(before, cache_counts())
        log.info("Compile warm-up took %.1f s (%s start: %d graphs from the cache in %s, %d compiled).",
                 self.seconds, self.cache["state"], self.cache["hits"], self.cache["folder"], self.cache["misses"])
