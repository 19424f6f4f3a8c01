"""Where predictions become numbers, the same way for the Trainer's validation and test, evaluate.py and the bare
PyTorch loop, so the three can never disagree.

A batch is reduced on its device to a short vector of sums (`evaluation_sums`, `training_sums`): inside a compiled
step this costs no extra kernel launch. A torchmetrics `Metric` adds those vectors with one addition per batch and
turns them into accuracy, loss, per-class accuracy, confusion matrix and flip-TTA accuracy at the end of an epoch,
summed over processes under DDP. Nothing here waits for the GPU: no `.item()`, no `bincount` (its CUDA kernel
reads the input's maximum back to the host), no Python numbers copied to the device.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchmetrics import Metric


def confusion_counts(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts of (true row, predicted column), float32.

    One `index_add_` of ones at each (true, predicted) cell: memory in the batch size (not in classes squared, as a
    one-hot product would be at 100 classes), exact (whole numbers below 2**24 add exactly in any order, so the
    result is deterministic on every device), free of host synchronization, and untouched by autocast.
    """
    cells = labels * num_classes + predictions
    counts = torch.zeros(num_classes * num_classes, dtype=torch.float32, device=labels.device)
    return counts.index_add_(0, cells, torch.ones_like(cells, dtype=torch.float32)).reshape(num_classes, num_classes)


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """How many images have their true class among the `k` highest logits (all of them when k >= classes)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).sum().float()


def evaluation_sums(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    flipped_logits: torch.Tensor | None = None) -> torch.Tensor:
    """One batch as [summed cross-entropy, confusion counts (row-major), correct with flip TTA, correct in the top
    5], float32.

    Flip TTA averages the class probabilities of each image and its mirror image (`flipped_logits`); without it
    that entry is 0.
    """
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    confusion = confusion_counts(labels, logits.argmax(dim=1), num_classes)
    if flipped_logits is None:
        tta_correct = torch.zeros_like(loss_sum)
    else:
        mean_probabilities = logits.softmax(dim=1) + flipped_logits.float().softmax(dim=1)
        tta_correct = (mean_probabilities.argmax(dim=1) == labels).sum().float()
    top5 = top_k_correct(logits, labels, 5)
    return torch.cat([loss_sum.reshape(1), confusion.reshape(-1), tta_correct.reshape(1), top5.reshape(1)])


def training_sums(logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """One training batch as [correct, images, loss x images, images], float32: the (sum, weight) pairs of the
    epoch's running accuracy and loss."""
    images = torch.full((), labels.numel(), dtype=torch.float32, device=labels.device)
    correct = (logits.argmax(dim=1) == labels).sum().float()
    return torch.stack([correct, images, loss.detach().float() * images, images])


class EvaluationSums(Metric):
    """Sums of `evaluation_sums` vectors over an epoch; `compute` gives accuracy, loss, per-class accuracy, the
    confusion matrix, flip-TTA accuracy and top-5 accuracy."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("sums", torch.zeros(num_classes * num_classes + 3), dist_reduce_fx="sum")

    def update(self, sums: torch.Tensor) -> None:
        self.sums += sums

    def compute(self) -> dict[str, torch.Tensor]:
        classes = self.num_classes
        confusion = self.sums[1 : 1 + classes * classes].reshape(classes, classes)
        images = confusion.sum().clamp(min=1)
        return {
            "acc": confusion.trace() / images,
            "loss": self.sums[0] / images,
            "acc_tta": self.sums[-2] / images,
            "acc_top5": self.sums[-1] / images,
            "per_class": confusion.diagonal() / confusion.sum(dim=1).clamp(min=1),
            "confusion": confusion.round().long(),
            "images": confusion.sum().round().long(),
        }


class RunningMean(Metric):
    """A weighted mean kept as one (sum, weight) pair and updated with one addition: `update` takes a pair such as
    `training_sums(...)[0:2]` (correct, images) or `[2:4]` (loss x images, images)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("pair", torch.zeros(2), dist_reduce_fx="sum")

    def update(self, pair: torch.Tensor) -> None:
        self.pair += pair

    def compute(self) -> torch.Tensor:
        return self.pair[0] / self.pair[1].clamp(min=1)


def evaluate_batch(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                   flip_tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluation_sums, predicted classes) of one batch of model-ready images: the single evaluation step that
    the LightningModule, evaluate.py and the bare loop share."""
    logits = network(images)
    flipped = network(images.flip(-1)) if flip_tta else None
    return evaluation_sums(logits, labels, num_classes, flipped), logits.argmax(dim=1)
