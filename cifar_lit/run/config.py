"""Command-line flags and YAML configs for train.py, parsed by jsonargparse into one typed `Options`.

Every field of the declared option groups (`RunOptions`, `ModelOptions`, `DataOptions`) is a flag (`--batch-size`)
and a config key (`batch_size:`) with its type, default and the help of its docstring's `Args:` line. Later sources
override earlier ones: defaults < `--config` files (in order) < command-line flags.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional, Union

import docstring_parser
import pytorch_lightning as pl
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from cifar_lit.models import model_factory
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.option_types import allowed_values, plain
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.run.options import GROUPS, TRAINER_BUILT, TRAINER_OWNED, Options

GROUPED = ("trainer",)  # options the parser takes as a group of their own (--trainer.NAME)


def _docstring_help(cls: type) -> dict[str, str]:
    return {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(cls.__doc__ or "").params}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def all_options() -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of every config key once, as the groups declare them: run options first, then
    model and data options (a key two groups share where it first comes)."""
    seen: dict[str, tuple[str, Any, Any, str]] = {}
    for group in GROUPS.values():
        helps, hints = _docstring_help(group), typing.get_type_hints(group)
        for option in fields(group):
            if option.name not in GROUPED:
                default = option.default_factory() if option.default is MISSING else option.default
                seen.setdefault(option.name, (option.name, hints[option.name], default, helps.get(option.name, "")))
    return list(seen.values())


def is_switch(annotation: Any) -> bool:
    """A yes/no flag (`--x` / `--no-x`): bool, or an optional bool whose None leaves the choice to the plan."""
    return annotation is bool or annotation == Optional[bool]


@functools.cache
def build_parser(lenient: bool = False) -> ArgumentParser:
    """The flags and config keys of every option. `lenient`: any value is taken as written (type checks off), to
    find which value a strict parse refused. Built once per process: it takes about 0.07 s, every run, resume and
    sweep trial parses, and parsing leaves it as it was."""
    parser = ArgumentParser(
        prog="train.py",
        description="Train a CIFAR network (the ResNet18 by default) until the target test accuracy is reached.",
        exit_on_error=False,
        default_env=False,
        print_config=None,  # the run's own --print-config prints the plan's decisions too
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of options (e.g. configs/default.yaml)")
    for name, annotation, default, help_text in all_options():
        allowed = allowed_values(annotation)
        if allowed and not is_switch(annotation):
            help_text = f"{help_text.rstrip('.')}; allowed: {allowed}"
        if is_switch(annotation):
            parser.add_argument(flag(name), action=ActionYesNo(no_prefix="no-"), nargs="?", default=default,
                                help=help_text)
        elif typing.get_origin(annotation) is list:  # --logger tensorboard mlflow: each value of the element type
            parser.add_argument(flag(name), type=Any if lenient else typing.get_args(annotation)[0], nargs="+",
                                default=default, help=help_text)
        else:
            parser.add_argument(flag(name), type=Any if lenient else annotation, default=default, help=help_text)
    # Any other argument of Lightning's Trainer, as LightningCLI offers them, under a heading of their own.
    parser.add_class_arguments(pl.Trainer, "trainer", skip=set(TRAINER_BUILT), fail_untyped=False)
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
    """The one-line message for the first of `values` that jsonargparse's own validation refuses (the one refused
    is found by checking values apart, so no error text is read); None when each is valid alone."""
    parser, annotations = build_parser(), {name: annotation for name, annotation, _, _ in all_options()}
    values = [(name, value) for name, value in values if name in annotations]

    def valid(part: list[tuple[str, Any]]) -> bool:
        if len({name for name, _ in part}) < len(part):  # a key twice (a file's, then a flag's): one dict won't do
            return all(valid([item]) for item in part)
        try:
            parser.parse_object(dict(part))
            return True
        except Exception:  # jsonargparse's ArgumentError: a value is outside its type
            return False

    if valid(values):  # all at once first: a resume or a sweep's trial checks ~100 values, a parse costs ~20 ms
        return None
    part = values  # then halves, keeping the first one refused: 7 parses for 100 values, not 100
    while len(part) > 1:
        first = part[:len(part) // 2]
        part = first if not valid(first) else part[len(first):]
    if valid(part):  # refused only together with another value: jsonargparse's own message will do
        return None
    ((name, value),) = part
    return (f"{flag(name)} (config key '{name}') is {shown(value)}, but it must be "
            f"{allowed_values(annotations[name]) or 'a value of its type (see --help)'}. Fix it on the "
            "command line or in the config file.")


def given_values(argv: Sequence[str]) -> list[tuple[str, Any]] | None:
    """Every value `argv` gives, as written, before any type check: each config file's (jsonargparse checks a file
    when it reads it, even where a flag overrides the key), then what the flags leave. None when even reading them
    fails (an unknown flag or key: jsonargparse's own message says which)."""
    values = [item for path in config_paths(argv) for item in (yaml.safe_load(Path(path).read_text()) or {}).items()]
    try:
        return values + list(build_parser(lenient=True).parse_args(list(argv), defaults=False).as_dict().items())
    except Exception:
        return None


def flag_values(argv: Sequence[str]) -> dict[str, Any]:
    """What the command-line flags set, as jsonargparse reads them, without defaults (a preset's `compile: true` is
    not a flag; `--compile` and `--no-compile` are)."""
    return build_parser().parse_args(split_config_files(argv)[1], defaults=False).as_dict()


def parse_options(argv: Sequence[str]) -> Options:
    """Every option, config files and flags applied (flags over files wherever they stand), each value checked
    against its type's range by jsonargparse; ConfigError on any problem. `Options.given` holds the keys the command
    line set (its flags and config files), `Options.flags` those its flags set."""
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
    from_flags = flag_values(argv)
    flags = set(from_flags) - {"config"}
    files = [yaml.safe_load(Path(path).read_text()) or {} for path in config_paths(argv)]
    given = flags | {key for content in files for key in content}
    values.update(trainer_arguments(values, given=given, trainer_given={
        *from_flags.get("trainer", {}), *(key for content in files for key in (content.get("trainer") or {}))}))
    check_not_null(values)
    check_network(values["model"])
    return Options.from_dict(values, given=given, flags=flags)


def trainer_arguments(values: dict[str, Any], *, given: set[str], trainer_given: set[str]) -> dict[str, Any]:
    """The parsed `--trainer.NAME` values turned into options: a Trainer argument a project flag also sets counts as
    that flag (refused when both are given), the others go to `trainer` as they were given."""
    parsed, chosen = values["trainer"], {}
    for name in sorted(trainer_given):
        value = parsed[name]
        if name in TRAINER_OWNED:
            own = TRAINER_OWNED[name]
            if own in given:
                raise ConfigError(f"{flag(own)} and --trainer.{name} both set the Trainer's {name}. Give it once: "
                                  f"{flag(own)} (config key '{own}').")
            problem = refused_value([(own, value)])  # checked as the flag it stands for
            if problem:
                raise ConfigError(f"{problem.removesuffix('.')} (given as --trainer.{name}).")
            chosen[own] = value
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"--trainer.{name} is {shown(value)}: give it a plain value (a number, text or "
                              "true/false), as a config file's trainer: section holds it.")
        else:
            chosen.setdefault("trainer", {})[name] = value
    return {"trainer": chosen.pop("trainer", {}), **chosen}


def check_network(name: str) -> None:
    """`--model` names a registered network or an importable `module:callable` (imported and registered now)."""
    try:
        model_factory(name)
    except KeyError as error:
        raise ConfigError(f"--model {name} is not a network this run can build: {error.args[0]}.") from None


def check_options(options: Options) -> None:
    """Options built in Python (`Options.of`, a sweep's trial) checked as the parser checks a command line: each
    value against its type's range; ConfigError naming the first one refused."""
    values = options.as_dict()
    check_not_null(values)
    check_network(options.model.model)
    problem = refused_value([(key, value) for key, value in values.items() if key != "config"])
    if problem:
        raise ConfigError(problem)


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
