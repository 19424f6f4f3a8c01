"""SGD with separate parameter groups, and per-step learning-rate schedules that survive a change of length.

The schedules are LambdaLR closures over the total step count: a checkpoint stores only the step reached and the
base rates, so a run resumed with more epochs rebuilds the same curve over its new length instead of carrying the
old length along (the OneCycleLR resume problem, Lightning issue #15462).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Schedule = Literal["onecycle", "linear", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """`lr` given for `reference_batch` images per step, scaled linearly to `global_batch` (Goyal et al., 2017);
    `lr` itself when there is no reference."""
    return lr * global_batch / reference_batch if reference_batch else lr


def split_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights of convolutions and linear layers, everything else): batch-norm scales and shifts and biases.

    Weight decay on BN scales only fights the scale invariance of the layer before them and slows training.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return decay, no_decay


def build_sgd(
    model: nn.Module,
    lr: float,
    *, momentum: float,
    nesterov: bool,
    weight_decay: float,
    norm_bias_weight_decay: float = 0.0,
    norm_bias_lr_scale: float = 1.0,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """SGD with two groups: conv/linear weights with `weight_decay`; BN and biases with their own decay and LR.

    `fused`: one kernel for the whole update (None: when every parameter is on a CUDA device), else foreach. The
    momentum buffers start as zeros, which gives the same first step as SGD's own start (the buffer becomes the
    gradient) and keeps them defined when loss scaling skips the first step: fused SGD would otherwise leave them
    uninitialised (`torch.empty_like`) and treat that memory as momentum from the second step on.
    """
    decay, no_decay = split_decay_groups(model)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": norm_bias_weight_decay, "lr": lr * norm_bias_lr_scale},
    ]
    if fused is None:
        fused = all(p.is_cuda for p in model.parameters())
    optimizer = torch.optim.SGD(
        groups,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
        fused=fused or None,
        foreach=None if fused else True,
    )
    if momentum > 0:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    return optimizer


def lr_factor(
    kind: str, total_steps: int, *, warmup_steps: int, start_factor: float, end_factor: float
) -> Callable[[int], float]:
    """The multiplier of the peak LR at each step.

    onecycle: cosine rise from `start_factor` to 1 over the warm-up, then cosine fall to `end_factor` (the shape
        of torch's OneCycleLR with anneal_strategy="cos");
    linear: linear rise, then linear fall to `end_factor`;
    cosine: linear rise, then cosine fall to `end_factor`;
    constant: linear rise, then flat.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            progress = step / warmup_steps
            if kind == "onecycle":
                progress = (1.0 - math.cos(math.pi * progress)) / 2.0
            return start_factor + (1.0 - start_factor) * progress
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return end_factor + (1.0 - end_factor) * (1.0 - progress)
        return end_factor + (1.0 - end_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *, total_steps: int,
    warmup_fraction: float,
    start_factor: float = 0.04,
    end_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = int(round(warmup_fraction * total_steps))
    factor = lr_factor(kind, total_steps, warmup_steps=warmup_steps, start_factor=start_factor, end_factor=end_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * len(optimizer.param_groups))
