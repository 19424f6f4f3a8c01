"""Pay torch.compile's cost before the clock starts: run every batch shape once, then restore the weights."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def compile_options(mode: str = "default") -> dict[str, Any]:
    """How the project compiles: whole graphs only (a graph break raises instead of silently splitting the step),
    static shapes (every shape is compiled during the warm-up), and the given Inductor `mode`."""
    return {"fullgraph": True, "dynamic": False, "mode": mode}


def run_every_shape(model: nn.Module, train_step: Callable[[int], torch.Tensor], eval_step: Callable[[int], Any],
                    train_sizes: Iterable[int], eval_sizes: Iterable[int]) -> float:
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
