"""Command-line flags and YAML configs for train.py, parsed by jsonargparse.

The training options are read from the signatures and docstrings of CIFARClassifier and ImageDataModule, so
every constructor argument is a flag (`--batch-size`) and a config key (`batch_size:`) with the same default and
help text; only the run-level options are declared here. Later sources override earlier ones:
defaults < `--config` files (in order) < command-line flags.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import docstring_parser
import pytorch_lightning as pl
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.plan import PLAN_DECIDES
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.option_types import (
    Epochs,
    Fraction,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    Seed,
    allowed_values,
    plain,
)
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.training.module import CIFARClassifier

Precision = Literal["bf16-mixed", "16-mixed", "32-true", "32", "bf16-true", "64-true"]
# Options a config file may hold but that belong to the run, not to the model or the data.
RUN_OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("gpus", Optional[NonNegativeInt], None,
     "GPUs to train on, 0 for the CPU; short for --accelerator gpu --devices N (default: one GPU if any, else CPU)"),
    ("accelerator", str, "auto", "Lightning accelerator: auto, cpu, gpu, cuda, mps"),
    ("devices", Union[int, str], 1, "devices per node (an int, or 'auto' for all)"),
    ("num_nodes", PositiveInt, 1, "machines to train on (DDP)"),
    ("strategy", str, "auto", "Lightning strategy, e.g. ddp (auto: ddp when there are several devices)"),
    ("sync_batchnorm", bool, False, "with several devices, compute batch-norm statistics over the global batch"),
    ("precision", Optional[Precision], None, "numeric precision (default: the hardware plan decides: bf16-mixed where "
                                             "bf16 is native, 16-mixed on older GPUs, 32-true on the CPU)"),
    ("max_epochs", Epochs, 10, "epochs at most; training stops earlier when --target-acc is reached"),
    ("limit_train_batches", Optional[PositiveInt], None,
     "train on at most this many batches per epoch (quick checks)"),
    ("target_acc", Optional[Fraction], None, "stop as soon as validation accuracy reaches this fraction (default: "
                                             "0.85 on CIFAR-10; on other data sets the whole schedule runs)"),
    ("seed", Seed, 0, "seed for weights, data order and augmentation"),
    ("resume", Optional[str], None, "checkpoint to resume from, or 'last' for the newest last.ckpt under --logdir"),
    ("fast_dev_run", bool, False, "run one batch of training, validation and test, write nothing, then stop"),
    ("find_lr", bool, False, "run the LR range test (Lightning's Tuner.lr_find on a throwaway Trainer), write "
                             "<logdir>/lr_find/lr_find.png and .json, print the suggested --lr, and stop"),
    ("lr_find_steps", PositiveInt, 100, "steps of the LR range test"),
    ("dry_run", bool, False, "print the hardware plan (device, precision, compile, data placement, memory) and the "
                             "run folder, then exit without reading data, compiling or writing anything"),
    ("logdir", str, "lightning_logs", "folder of the runs (version_N/ with TensorBoard logs and checkpoints)"),
    ("deterministic", bool, False, "use deterministic algorithms (bit-identical reruns; slower on GPUs)"),
    ("ckpt_every_n_epochs", NonNegativeInt, 1,
     "refresh last.ckpt after every N epochs; 0: only when training ends or a signal stops it (fewer writes, but a "
     "kill -9 then loses everything trained so far)"),
    ("ckpt_every_n_steps", NonNegativeInt, 0, "also refresh last.ckpt every N training steps (0: only at epoch ends)"),
    ("best_weights_only", bool, False,
     "best-*.ckpt holds the weights only, not the optimizer state: half the bytes per save (resume from last.ckpt)"),
    ("log_every_n_steps", PositiveInt, 50, "how often step-level scalars are written"),
    ("progress_bar", bool, True, "show Lightning's progress bar"),
    ("sanity_val_steps", NonNegativeInt, 2, "validation batches run before training as a sanity check"),
    ("grid_images", NonNegativeInt, 30,
     "images in each misclassified/correct grid, spread over the classes (0: no grids)"),
    ("grid_every_n_epochs", NonNegativeInt, 1, "log the validation grids every N epochs (0: only after testing)"),
    ("gradcam_layer", Optional[str], "layer3",
     "layer whose Grad-CAM maps are drawn over the grids' images (e.g. layer3, layer3.1, layer4; null: none)"),
    ("compile_cache", str, "~/.cache/cifar_lit/compile",
     "folder where torch.compile keeps its work between runs (a second run reuses it: a warm start); delete it to "
     "compile from scratch"),
    ("ema_decay", Optional[OpenUnitInterval], None, "keep an exponential moving average of the weights with this "
                                                    "decay and evaluate with it (e.g. 0.999); off by default"),
)
CONFIGURED_CLASSES = (CIFARClassifier, ImageDataModule)
NOT_CONFIGURABLE = {"self", "num_classes"}


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
    """Every configurable key once: run options first, then model and data options (shared names merged). The
    options the hardware plan decides default to None here (the classes keep their own defaults for library use)."""
    seen: dict[str, tuple[str, Any, Any, str]] = {}
    for option in list(RUN_OPTIONS) + [o for cls in CONFIGURED_CLASSES for o in _class_options(cls)]:
        seen.setdefault(option[0], option)
    key, annotation, default, help_text = seen["lr"]
    seen["lr"] = (key, Union[annotation, Literal["auto"]], default,
                  f"{help_text.rstrip('.')}; auto: run the LR range test (--find-lr) first and train with its "
                  "suggestion")
    for name in PLAN_DECIDES:
        key, annotation, _, help_text = seen[name]
        if "hardware plan" not in help_text:
            help_text = f"{help_text.rstrip('.')} (default: the hardware plan decides, see --dry-run)"
        seen[name] = (key, Optional[annotation], None, help_text)
    return list(seen.values())


def is_switch(annotation: Any) -> bool:
    """A yes/no flag (`--x` / `--no-x`): bool, or an optional bool whose None leaves the choice to the plan."""
    return annotation is bool or annotation == Optional[bool]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train the CIFAR ResNet18 on CIFAR-10 until the target test accuracy is reached.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of options (e.g. configs/default.yaml)")
    for name, annotation, default, help_text in all_options():
        allowed = allowed_values(annotation)
        if allowed and not is_switch(annotation):
            help_text = f"{help_text.rstrip('.')}; allowed: {allowed}"
        if is_switch(annotation):
            parser.add_argument(flag(name), action=ActionYesNo(no_prefix="no-"), nargs="?", default=default,
                                help=help_text)
        else:
            parser.add_argument(flag(name), type=annotation, default=default, help=help_text)
    return parser


# What jsonargparse says of a value outside its type: 'Parser key "lr": Not of type PositiveFloat: -1.0 does not
# conform to restriction v>0', or for an optional type '... Given value: 0'.
_REFUSED_KEY = re.compile(r'Parser key "(\w+)"')
_REFUSED_VALUE = re.compile(r"(?:Given value|Got value): (\S+)|Not of type \w+: (\S+) does not conform"
                            r"|(?:invalid literal for int\(\) with base 10"
                            r"|could not convert string to float): '([^']*)'")


def range_message(error_text: str) -> str | None:
    """The one-line message for a value outside its option's range, from jsonargparse's error; None otherwise."""
    key, value = _REFUSED_KEY.search(error_text), _REFUSED_VALUE.search(error_text)
    annotations = {name: annotation for name, annotation, _, _ in all_options()}
    if key is None or value is None or key.group(1) not in annotations:
        return None
    allowed = allowed_values(annotations[key.group(1)])
    if allowed is None:
        return None
    name, given = key.group(1), next(group for group in value.groups() if group is not None).rstrip(".")
    return (f"{flag(name)} (config key '{name}') is {given}, but it must be {allowed}. Fix it on the command line or "
            "in the config file.")


def config_files_first(argv: Sequence[str]) -> list[str]:
    """`argv` with every `--config FILE` moved to the front, in their order: flags then override config files
    wherever they stand on the command line (jsonargparse applies arguments left to right)."""
    files, rest, arguments = [], [], list(argv)
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if argument == "--config" and index + 1 < len(arguments):
            files += arguments[index : index + 2]
            index += 2
            continue
        (files if argument.startswith("--config=") else rest).append(argument)
        index += 1
    return files + rest


def check_config_files(argv: Sequence[str]) -> None:
    """Each --config file exists and is YAML, or a ConfigError naming it (jsonargparse would say '<unicode
    string>' and no path)."""
    for index, argument in enumerate(argv):
        path = argv[index + 1] if argument == "--config" and index + 1 < len(argv) else \
            argument.split("=", 1)[1] if argument.startswith("--config=") else None
        if path is None:
            continue
        try:
            content = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"The config file {path} does not exist. Give the path of a YAML file, e.g. "
                              "configs/default.yaml.") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"Cannot read the config file {path} ({error}). Give a readable YAML file.") from None
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"The config file {path} is not valid YAML{line}: {problem}. Fix the file (keys and "
                              "values as `key: value`, one per line).") from None
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"The config file {path} holds a {type(content).__name__}, not a mapping of options. "
                              "Write one `key: value` per line, e.g. max_epochs: 30.")


def check_not_null(config: dict[str, Any]) -> None:
    """A key set to null that cannot be null is refused (jsonargparse lets a YAML null through any type)."""
    for name, annotation, _, _ in all_options():
        optional = typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in typing.get_args(
            annotation)
        if config.get(name, "") is None and not optional and name != "config":
            raise ConfigError(f"{flag(name)} (config key '{name}') is null, but it must be "
                              f"{allowed_values(annotation) or 'set'}. Give it a value or leave the key out.")


def parse_config(argv: Sequence[str]) -> dict[str, Any]:
    """Flat dict of every option, config files and flags applied (flags over files wherever they stand), each value
    checked against its type's range; ConfigError on any problem."""
    argv = config_files_first(argv)
    check_config_files(argv)
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
    except Exception as error:  # jsonargparse raises ArgumentError (and others) for unknown keys and bad values
        message = " ".join(str(error).split())
        raise ConfigError(range_message(message) or (
            f"Invalid option: {message}. Run `python train.py --help` for the accepted flags; config files use "
            "the same names with underscores (for example max_epochs: 30)."
        )) from None
    config = {key: plain(value) for key, value in namespace.as_dict().items()}
    config["config"] = [str(path) for path in config.get("config") or []]
    check_not_null(config)
    return config


def class_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The subset of `config` that `cls`'s constructor takes."""
    names = inspect.signature(cls.__init__).parameters
    return {name: config[name] for name in names if name in config}


class ConfigRecord(RunFolderCallback):
    """Writes the fully resolved configuration to <run>/config.yaml (rank zero); resuming reads it back. Checkpoints
    carry it too (this callback's state), so a checkpoint copied out of its run folder still resumes as it ran."""

    def __init__(self, config: dict[str, Any], run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        return {"config": dict(self.config)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: a resumed run's configuration is chosen before the Trainer exists (run.resume)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
