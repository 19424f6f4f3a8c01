"""The recipe's options, as one declared type: what builds the network and trains it (`options.model` of a run).

Each field is a flag (`--lr`) and a config key (`lr:`); its type is its allowed range, checked by the parser, and
its line under `Args:` is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from cifar_lit.models import BASE_WIDTH, DEFAULT_MODEL
from cifar_lit.reliability.option_types import (
    ClosedUnitInterval,
    Fraction,
    FractionBelowOne,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from cifar_lit.training.optim import Schedule

# A registered network (cifar_lit.models) or `module:callable`; checked by resolving it (run/config.py).
ModelName = str
# A number, or "auto": the LR range test runs first and its suggestion is trained with (run/preflight.py).
LearningRate = Union[PositiveFloat, Literal["auto"]]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The network and how it is trained.

    Args:
        model: the network: resnet18 (11,173,962 parameters), resnet34 (21,282,122) or resnet9 (Page's DAWNBench
            ResNet-9, 6,573,130), or your own as module:callable (a function taking num_classes and width, in a
            module importable from the working directory or PYTHONPATH).
        width: channels of the network's first stage (doubled in each later one). 64 is the published network;
            narrower ones of the same shape are for quick tests.
        lr: peak learning rate for `lr_reference_batch_size` images per optimizer step; auto: run the LR range test
            (--find-lr) first and train with its suggestion.
        lr_reference_batch_size: the peak LR is scaled linearly with the global batch (batch size per device x
            devices x nodes) relative to this many images (Goyal et al., 2017); null uses `lr` as it is.
        batch_size: training images per step on each device (the global batch is this times the devices).
        momentum: SGD momentum.
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty on convolution and linear weights.
        norm_bias_weight_decay: L2 penalty on batch-norm parameters and biases (usually 0).
        norm_bias_lr_scale: their learning rate relative to the other weights.
        label_smoothing: cross-entropy label smoothing in training (evaluation reports plain cross-entropy).
        schedule: "onecycle", "linear", "cosine" or "constant" (see `cifar_lit.training.optim.lr_factor`).
        warmup_fraction: share of all steps spent warming up.
        lr_start_factor: LR at the first step, as a fraction of the peak.
        lr_end_factor: LR at the last step, as a fraction of the peak.
        flip_tta: also evaluate on mirrored images and report that accuracy as `val/acc_tta`, `test/acc_tta`.
        channels_last: keep weights NHWC-strided (faster convolutions on tensor cores); null: the hardware plan
            decides.
        fused_sgd: one fused kernel for the SGD update, else foreach; null: the hardware plan decides (fused on
            GPUs).
        compile: compile each step with torch.compile: network, loss and the step's metric sums as one graph.
        compile_mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune" or
            "max-autotune-no-cudagraphs".
        compile_warmup: with `compile`, first run every batch shape once so the compile time is paid (and reported
            as warm-up) before training and its clock start.
    """

    model: ModelName = DEFAULT_MODEL
    width: PositiveInt = BASE_WIDTH
    lr: LearningRate = 0.2
    lr_reference_batch_size: PositiveInt | None = 256
    batch_size: PositiveInt = 256
    momentum: FractionBelowOne = 0.9
    nesterov: bool = True
    weight_decay: NonNegativeFloat = 5e-4
    norm_bias_weight_decay: NonNegativeFloat = 0.0
    norm_bias_lr_scale: NonNegativeFloat = 1.0
    label_smoothing: FractionBelowOne = 0.1
    schedule: Schedule = "onecycle"
    warmup_fraction: FractionBelowOne = 0.25
    lr_start_factor: Fraction = 0.04
    lr_end_factor: ClosedUnitInterval = 0.0
    flip_tta: bool = False
    channels_last: bool | None = None
    fused_sgd: bool | None = None
    compile: bool = False
    compile_mode: CompileMode = "default"
    compile_warmup: bool = True
