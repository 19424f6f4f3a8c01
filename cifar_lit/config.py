"""Command-line flags and YAML configs for train.py, parsed by jsonargparse.

The training options are read from the signatures and docstrings of CIFARClassifier and CIFAR10DataModule, so
every constructor argument is a flag (`--batch-size`) and a config key (`batch_size:`) with the same default and
help text; only the run-level options are declared here. Later sources override earlier ones:
defaults < `--config` files (in order) < command-line flags.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import docstring_parser
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from cifar_lit.data.datamodule import CIFAR10DataModule
from cifar_lit.errors import ConfigError
from cifar_lit.module import CIFARClassifier

PRECISIONS = ("bf16-mixed", "16-mixed", "32-true", "32", "bf16-true", "64-true")
# Options a config file may hold but that belong to the run, not to the model or the data.
RUN_OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("gpus", Optional[int], None,
     "GPUs to train on, 0 for the CPU; short for --accelerator gpu --devices N (default: one GPU if any, else CPU)"),
    ("accelerator", str, "auto", "Lightning accelerator: auto, cpu, gpu, cuda, mps"),
    ("devices", Union[int, str], 1, "devices per node (an int, or 'auto' for all)"),
    ("num_nodes", int, 1, "machines to train on (DDP)"),
    ("strategy", str, "auto", "Lightning strategy, e.g. ddp (auto: ddp when there are several devices)"),
    ("sync_batchnorm", bool, False, "with several devices, compute batch-norm statistics over the global batch"),
    ("precision", Optional[str], None,
     f"numeric precision ({', '.join(PRECISIONS)}); default bf16-mixed on a GPU that supports it, else 32-true"),
    ("max_epochs", int, 10, "epochs at most; training stops earlier when --target-acc is reached"),
    ("limit_train_batches", Optional[int], None, "train on at most this many batches per epoch (quick checks)"),
    ("target_acc", float, 0.85, "stop as soon as validation accuracy reaches this fraction, in (0, 1]"),
    ("seed", int, 0, "seed for weights, data order and augmentation"),
    ("resume", Optional[str], None, "checkpoint to resume from, or 'last' for the newest last.ckpt under --logdir"),
    ("fast_dev_run", bool, False, "run one batch of training, validation and test, write nothing, then stop"),
    ("logdir", str, "lightning_logs", "folder of the runs (version_N/ with TensorBoard logs and checkpoints)"),
    ("deterministic", bool, False, "use deterministic algorithms (bit-identical reruns; slower on GPUs)"),
    ("ckpt_every_n_steps", int, 0, "also refresh last.ckpt every N training steps (0: only at epoch ends)"),
    ("log_every_n_steps", int, 50, "how often step-level scalars are written"),
    ("progress_bar", bool, True, "show Lightning's progress bar"),
    ("sanity_val_steps", int, 2, "validation batches run before training as a sanity check"),
    ("grid_images", int, 30, "images in each misclassified/correct grid, spread over the classes (0: no grids)"),
    ("grid_every_n_epochs", int, 1, "log the validation grids every N epochs (0: only after testing)"),
    ("ema_decay", Optional[float], None, "keep an exponential moving average of the weights with this decay and "
                                         "evaluate with it (e.g. 0.999); off by default"),
)
CONFIGURED_CLASSES = (CIFARClassifier, CIFAR10DataModule)
NOT_CONFIGURABLE = {"self", "num_classes"}

_positive = (lambda v: v >= 1, "an integer >= 1")
_non_negative = (lambda v: v >= 0, "a number >= 0")
_fraction_open = (lambda v: 0 <= v < 1, "a number in [0, 1)")
# name -> (check, what is allowed); None values are always allowed for optional keys.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_epochs": _positive,
    "target_acc": (lambda v: 0 < v <= 1, "a fraction in (0, 1], e.g. 0.85 for 85%"),
    "batch_size": _positive,
    "eval_batch_size": _positive,
    "num_nodes": _positive,
    "limit_train_batches": _positive,
    "log_every_n_steps": _positive,
    "gpus": (lambda v: v >= 0, "an integer >= 0 (0 trains on the CPU)"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "lr_reference_batch_size": _positive,
    "momentum": _fraction_open,
    "weight_decay": _non_negative,
    "norm_bias_weight_decay": _non_negative,
    "norm_bias_lr_scale": _non_negative,
    "label_smoothing": _fraction_open,
    "warmup_fraction": _fraction_open,
    "lr_start_factor": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "lr_end_factor": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "crop_padding": _non_negative,
    "cutout": _non_negative,
    "val_split": _non_negative,
    "num_workers": _non_negative,
    "ckpt_every_n_steps": _non_negative,
    "sanity_val_steps": _non_negative,
    "grid_images": _non_negative,
    "grid_every_n_epochs": _non_negative,
    "ema_decay": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.999"),
    "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _class_options(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) for each constructor argument of `cls`, from its signature and docstring."""
    hints = typing.get_type_hints(cls.__init__)
    docs = {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(cls.__doc__ or "").params}
    options = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name not in NOT_CONFIGURABLE:
            options.append((name, hints[name], parameter.default, docs.get(name, "")))
    return options


def all_options() -> list[tuple[str, Any, Any, str]]:
    """Every configurable key once: run options first, then model and data options (shared names merged)."""
    seen: dict[str, tuple[str, Any, Any, str]] = {}
    for option in list(RUN_OPTIONS) + [o for cls in CONFIGURED_CLASSES for o in _class_options(cls)]:
        seen.setdefault(option[0], option)
    return list(seen.values())


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train the CIFAR ResNet18 on CIFAR-10 until the target test accuracy is reached.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of options (e.g. configs/default.yaml)")
    for name, annotation, default, help_text in all_options():
        if annotation is bool:
            parser.add_argument(flag(name), action=ActionYesNo(no_prefix="no-"), nargs="?", default=default,
                                help=help_text)
        else:
            parser.add_argument(flag(name), type=annotation, default=default, help=help_text)
    return parser


def check_ranges(config: dict[str, Any]) -> None:
    for name, (check, allowed) in RANGES.items():
        value = config.get(name)
        if value is not None and not check(value):
            raise ConfigError(
                f"{flag(name)} (config key '{name}') is {value!r}, but it must be {allowed}. Fix it on the command "
                "line or in the config file."
            )


def parse_config(argv: Sequence[str]) -> dict[str, Any]:
    """Flat dict of every option, config files and flags applied, ranges checked; ConfigError on any problem."""
    parser = build_parser()
    try:
        namespace = parser.parse_args(list(argv))
    except Exception as error:  # jsonargparse raises ArgumentError (and others) for unknown keys and bad values
        message = " ".join(str(error).split())
        raise ConfigError(
            f"Invalid option: {message}. Run `python train.py --help` for the accepted flags; config files use "
            "the same names with underscores (for example max_epochs: 30)."
        ) from None
    config = namespace.as_dict()
    config["config"] = [str(path) for path in config.get("config") or []]
    check_ranges(config)
    return config


def class_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The subset of `config` that `cls`'s constructor takes."""
    names = inspect.signature(cls.__init__).parameters
    return {name: config[name] for name in names if name in config}
