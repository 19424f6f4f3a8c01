"""Command-line flags and YAML configs for train.py, parsed by jsonargparse.

The training options are read from the signatures and docstrings of CIFARClassifier and ImageDataModule, so
every constructor argument is a flag (`--batch-size`) and a config key (`batch_size:`) with the same default and
help text; only the run-level options are declared here. Later sources override earlier ones:
defaults < `--config` files (in order) < command-line flags.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any, Literal, Optional, Union

import docstring_parser
import pytorch_lightning as pl
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.plan import PLAN_DECIDES, HardwarePlan, HardwareRequest
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


@dataclass
class RunOptions:
    """Options a config file may hold that belong to the run, not to the network or the data.

    Args:
        gpus: GPUs to train on, 0 for the CPU; short for --accelerator gpu --devices N (default: one GPU if any,
            else CPU)
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda, mps
        devices: devices per node (an int, or 'auto' for all)
        num_nodes: machines to train on (DDP)
        strategy: Lightning strategy, e.g. ddp (auto: ddp when there are several devices)
        sync_batchnorm: with several devices, compute batch-norm statistics over the global batch
        precision: numeric precision (default: the hardware plan decides: bf16-mixed where bf16 is native, 16-mixed
            on older GPUs, 32-true on the CPU)
        max_epochs: epochs at most; training stops earlier when --target-acc is reached
        limit_train_batches: train on at most this many batches per epoch (quick checks)
        target_acc: stop as soon as validation accuracy reaches this fraction (default: 0.85 on CIFAR-10; on other
            data sets the whole schedule runs)
        resume: checkpoint to resume from, or 'last' for the newest last.ckpt under --logdir
        fast_dev_run: run one batch of training, validation and test, write nothing, then stop
        find_lr: run the LR range test (Lightning's Tuner.lr_find on a throwaway Trainer), write
            <logdir>/lr_find_N/lr_find.png and .json, print the suggested --lr, and stop
        lr_find_steps: steps of the LR range test
        dry_run: print the hardware plan (device, precision, compile, data placement, memory) and the run folder,
            then exit without reading data, compiling or writing anything
        logdir: folder of the runs (version_N/ with TensorBoard logs and checkpoints)
        deterministic: use deterministic algorithms (bit-identical reruns; slower on GPUs)
        ckpt_every_n_epochs: refresh last.ckpt after every N epochs; 0: only when training ends or a signal stops it
            (fewer writes, but a kill -9 then loses everything trained so far)
        ckpt_every_n_steps: also refresh last.ckpt every N training steps (0: only at epoch ends)
        best_weights_only: best-*.ckpt holds the weights only, not the optimizer state: half the bytes per save
            (resume from last.ckpt)
        log_every_n_steps: how often step-level scalars are written
        progress_bar: show Lightning's progress bar
        sanity_val_steps: validation batches run before training as a sanity check
        grid_images: images in each misclassified/correct grid, spread over the classes (0: no grids)
        grid_every_n_epochs: log the validation grids every N epochs (0: only after testing)
        gradcam_layer: layer whose Grad-CAM maps are drawn over the grids' images (e.g. layer3, layer3.1, layer4;
            null: none)
        compile_cache: folder where torch.compile keeps its work between runs (a second run reuses it: a warm
            start); delete it to compile from scratch
        ema_decay: keep an exponential moving average of the weights with this decay and evaluate with it (e.g.
            0.999); off by default
    """

    gpus: Optional[NonNegativeInt] = None
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    num_nodes: PositiveInt = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    precision: Optional[Precision] = None
    max_epochs: Epochs = 10
    limit_train_batches: Optional[PositiveInt] = None
    target_acc: Optional[Fraction] = None
    seed: Seed = 0
    resume: Optional[str] = None
    fast_dev_run: bool = False
    find_lr: bool = False
    lr_find_steps: PositiveInt = 100
    dry_run: bool = False
    logdir: str = "lightning_logs"
    deterministic: bool = False
    ckpt_every_n_epochs: NonNegativeInt = 1
    ckpt_every_n_steps: NonNegativeInt = 0
    best_weights_only: bool = False
    log_every_n_steps: PositiveInt = 50
    progress_bar: bool = True
    sanity_val_steps: NonNegativeInt = 2
    grid_images: NonNegativeInt = 30
    grid_every_n_epochs: NonNegativeInt = 1
    gradcam_layer: Optional[str] = "layer3"
    compile_cache: str = "~/.cache/cifar_lit/compile"
    ema_decay: Optional[OpenUnitInterval] = None


NOT_CONFIGURABLE = {"self", "num_classes"}  # the class count comes from the data


def constructor_fields(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, type, default) of each configurable constructor argument of `cls`."""
    hints, parameters = typing.get_type_hints(cls.__init__), inspect.signature(cls.__init__).parameters
    return [(name, hints[name], parameter.default) for name, parameter in parameters.items()
            if name not in NOT_CONFIGURABLE]


def options_of(cls: type) -> type:
    """A dataclass of `cls`'s constructor arguments: the typed group of options that builds it."""
    return make_dataclass(f"{cls.__name__}Options", [(name, annotation, field(default=default))
                                                     for name, annotation, default in constructor_fields(cls)])


ModelOptions = options_of(CIFARClassifier)
DataOptions = options_of(ImageDataModule)
GROUPS = {"run": RunOptions, "model": ModelOptions, "data": DataOptions}


@dataclass
class Options:
    """Every option of a run, by group: `run` (RunOptions), `model` (CIFARClassifier's arguments) and `data`
    (ImageDataModule's). An option both classes take (batch_size, seed, channels_last, compile) is in both groups
    with one value. The flat dict of the config keys exists only for YAML and JSON (`as_dict`, `from_dict`)."""

    run: RunOptions
    model: Any  # ModelOptions
    data: Any  # DataOptions
    config: list[str] = field(default_factory=list)  # the --config files, in the order they were given
    given: set[str] = field(default_factory=set)  # the keys command-line flags set (not config files)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Options:
        """From flat config keys (a parsed command line, a config.yaml): each group takes the keys it has."""
        groups = {name: kind(**{f.name: values[f.name] for f in fields(kind) if f.name in values})
                  for name, kind in GROUPS.items()}
        return cls(**groups, config=[str(path) for path in values.get("config") or []])

    def as_dict(self) -> dict[str, Any]:
        """The flat config keys, as config.yaml and summary.json hold them."""
        flat: dict[str, Any] = {"config": list(self.config)}
        for group in (self.run, self.model, self.data):
            flat.update(asdict(group))
        return flat

    def replace(self, **changes: Any) -> Options:
        """A copy with `changes` applied to every group that has the key; an unknown key is a KeyError."""
        unknown = set(changes) - {f.name for kind in GROUPS.values() for f in fields(kind)}
        if unknown:
            raise KeyError(f"no option named {', '.join(sorted(unknown))}")

        def changed(group: Any) -> Any:
            names = {f.name for f in fields(group)}
            return dataclass_replace(group, **{key: value for key, value in changes.items() if key in names})

        return Options(changed(self.run), changed(self.model), changed(self.data), list(self.config), set(self.given))

    def hardware_request(self, num_classes: int = 10) -> HardwareRequest:
        """What this run asks of the machine (`hardware.plan`)."""
        run, model, data = self.run, self.model, self.data
        return HardwareRequest(run.gpus, run.accelerator, run.devices, run.precision, bool(model.compile),
                               "compile" in self.given, model.channels_last, model.fused_sgd, data.data_on_device,
                               model.model, model.width, num_classes, model.batch_size, data.eval_batch_size,
                               bool(run.ema_decay))

    def with_plan(self, hardware: HardwarePlan) -> Options:
        """The options with the plan's decisions in place of what they left to it."""
        return self.replace(**hardware.decided())

    def model_kwargs(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self.model), **extra}

    def data_kwargs(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self.data), **extra}


def _docstring_help(cls: type) -> dict[str, str]:
    return {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(cls.__doc__ or "").params}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def all_options() -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of every configurable key once: run options first, then model and data options
    (shared names merged). The options the hardware plan decides default to None here (the classes keep their own
    defaults for library use)."""
    seen: dict[str, tuple[str, Any, Any, str]] = {}
    for cls in (RunOptions, CIFARClassifier, ImageDataModule):
        helps = _docstring_help(cls)
        fields_of = ([(f.name, typing.get_type_hints(cls)[f.name], f.default) for f in fields(cls)]
                     if cls is RunOptions else constructor_fields(cls))
        for name, annotation, default in fields_of:
            seen.setdefault(name, (name, annotation, default, helps.get(name, "")))
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


def build_parser(lenient: bool = False) -> ArgumentParser:
    """The flags and config keys of every option. `lenient`: any value is taken as written (type checks off), to
    find which value a strict parse refused."""
    parser = ArgumentParser(
        prog="train.py",
        description="Train a CIFAR network (the ResNet18 by default) until the target test accuracy is reached.",
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
            parser.add_argument(flag(name), type=Any if lenient else annotation, default=default, help=help_text)
    return parser


def split_config_files(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(every `--config FILE`, in its order, written `--config=FILE`; every other argument)."""
    files, rest, arguments, index = [], [], list(argv), 0
    while index < len(arguments):
        argument = arguments[index]
        if argument == "--config" and index + 1 < len(arguments):
            files.append(f"--config={arguments[index + 1]}")
            index += 2
            continue
        (files if argument.startswith("--config=") else rest).append(argument)
        index += 1
    return files, rest


def config_paths(argv: Sequence[str]) -> list[str]:
    """The config files `argv` names, in their order."""
    return [argument.split("=", 1)[1] for argument in split_config_files(argv)[0]]


def config_files_first(argv: Sequence[str]) -> list[str]:
    """`argv` with every `--config FILE` moved to the front, in their order: flags then override config files
    wherever they stand on the command line (jsonargparse applies arguments left to right)."""
    files, rest = split_config_files(argv)
    return files + rest


def check_config_files(argv: Sequence[str]) -> None:
    """Each --config file exists and is YAML, or a ConfigError naming it (jsonargparse would say '<unicode
    string>' and no path)."""
    for path in config_paths(argv):
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


def shown(value: Any) -> str:
    """A value as a message quotes it: as written for text, `inf`/`nan` for floats, YAML for the rest."""
    if isinstance(value, (str, int, float)):
        return value if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def refused_value(values: list[tuple[str, Any]]) -> str | None:
    """The one-line message for the first of `values` that jsonargparse's own validation refuses, each value checked
    alone against its option's type (so no error text is read); None when each is valid alone."""
    parser, annotations = build_parser(), {name: annotation for name, annotation, _, _ in all_options()}
    for name, value in values:
        if name not in annotations:
            continue
        try:
            parser.parse_object({name: value})
        except Exception:  # jsonargparse's ArgumentError: the value is outside the type
            return (f"{flag(name)} (config key '{name}') is {shown(value)}, but it must be "
                    f"{allowed_values(annotations[name]) or 'a value of its type (see --help)'}. Fix it on the "
                    "command line or in the config file.")
    return None


def given_values(argv: Sequence[str]) -> list[tuple[str, Any]] | None:
    """Every value `argv` gives, as written, before any type check: each config file's (jsonargparse checks a file
    when it reads it, even where a flag overrides the key), then what the flags leave. None when even reading them
    fails (an unknown flag or key: jsonargparse's own message says which)."""
    values = [item for path in config_paths(argv) for item in (yaml.safe_load(Path(path).read_text()) or {}).items()]
    try:
        return values + list(build_parser(lenient=True).parse_args(list(argv), defaults=False).as_dict().items())
    except Exception:
        return None


def flags_given(argv: Sequence[str]) -> set[str]:
    """The config keys that command-line flags set, as jsonargparse reads them (a preset's `compile: true` is not a
    flag; `--compile` and `--no-compile` are)."""
    return set(build_parser().parse_args(split_config_files(argv)[1], defaults=False).as_dict()) - {"config"}


def parse_options(argv: Sequence[str]) -> Options:
    """Every option, config files and flags applied (flags over files wherever they stand), each value checked
    against its type's range by jsonargparse; ConfigError on any problem. `Options.given` holds the keys set by
    flags, not by config files."""
    argv = config_files_first(argv)
    check_config_files(argv)
    try:
        namespace = build_parser().parse_args(argv)
    except Exception as error:  # jsonargparse raises ArgumentError (and others) for unknown keys and bad values
        given = given_values(argv)
        message = " ".join(str(error).split())
        raise ConfigError((refused_value(given) if given else None) or (
            f"Invalid option: {message}. Run `python train.py --help` for the accepted flags; config files use "
            "the same names with underscores (for example max_epochs: 30)."
        )) from None
    values = {key: plain(value) for key, value in namespace.as_dict().items()}
    check_not_null(values)
    options = Options.from_dict(values)
    options.given = flags_given(argv)
    return options


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
