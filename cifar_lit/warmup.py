"""Pay torch.compile's cost before the clock starts: run every batch shape once, then restore the weights."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn


def run_every_shape(
    model: nn.Module,
    train_batch_size: int,
    eval_batch_sizes: Iterable[int],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
    flip_tta: bool = False,
) -> float:
    """One training forward/backward and one evaluation forward per distinct shape, on random images.

    Weights and batch-norm statistics are restored afterwards and gradients dropped, so training starts from the
    same state as without the warm-up. Returns the seconds spent (device synchronized).
    """
    device = next(model.parameters()).device
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator(device=device).manual_seed(0)

    def batch(size: int) -> torch.Tensor:
        images = torch.randn(size, 3, 32, 32, device=device, generator=generator)
        return images.contiguous(memory_format=memory_format)

    start = time.perf_counter()
    was_training = model.training
    model.train()
    with forward_context():
        loss = loss_fn(model(batch(train_batch_size)), torch.zeros(train_batch_size, dtype=torch.long, device=device))
    loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode(), forward_context():
        for size in sorted(set(eval_batch_sizes)):
            images = batch(size)
            model(images)
            if flip_tta:
                model(images.flip(-1))
    model.train(was_training)
    model.load_state_dict(saved)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
