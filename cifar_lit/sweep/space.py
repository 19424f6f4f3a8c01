"""The space file of a sweep: what to search (one entry per option, named as in config files), for what objective,
under which study name; every mistake in it is one ConfigError before any trial runs.

    objective: time_to_target       # or accuracy
    study: fast85                   # the default study name
    space:
      lr: {low: 0.05, high: 1.0, log: true}
      batch_size: {choices: [256, 512, 1024]}
      max_epochs: {low: 6, high: 12}          # an integer option: integers are drawn
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml

from cifar_lit.reliability.errors import ConfigError
from cifar_lit.run.config import all_options, refused_value
from cifar_lit.run.options import option_names

Objective = Literal["time_to_target", "accuracy"]
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)
DIRECTIONS = {"time_to_target": "minimize", "accuracy": "maximize"}
# Options a trial cannot take from the space: where it runs, on how many devices, and what it writes are the
# sweep's (a trial runs on one device).
NOT_SEARCHED = ("resume", "dry_run", "print_config", "find_lr", "fast_dev_run", "logdir", "run_name", "trainer",
                "gpus", "accelerator", "devices", "num_nodes", "strategy", "logger", "mlflow_uri")


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """One searched option: a range (`low`..`high`, drawn on a log scale with `log`; integers for an integer
    option) or a list of `choices`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def as_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


@dataclass(frozen=True)
class SearchSpace:
    objective: Objective
    study: str
    parameters: tuple[Parameter, ...]

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.objective]

    def as_dict(self) -> dict[str, Any]:
        """What a study keeps of its space, to tell a later command whose file changed."""
        return {"objective": self.objective, "space": {p.name: p.as_dict() for p in self.parameters}}


def is_integer(annotation: Any) -> bool:
    """An int option (its restricted types are int subclasses), optional or not."""
    kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return all(isinstance(kind, type) and issubclass(kind, int) and kind is not bool for kind in kinds)


def parameter(name: str, entry: Any, source: Path) -> Parameter:
    """One entry of the space, checked against the option's type: every bound or choice must be a value the option
    takes."""
    annotations = {option: annotation for option, annotation, _, _ in all_options()}
    if name not in annotations or name in NOT_SEARCHED:
        what = "is not an option" if name not in option_names() else "is the sweep's own, not searched"
        raise ConfigError(f"{source}: the space's {name!r} {what}. Search options named as in config files "
                          "(`python train.py --help`), e.g. lr, batch_size, warmup_fraction.")
    if not isinstance(entry, dict) or not ({"choices"} <= set(entry) or {"low", "high"} <= set(entry)):
        raise ConfigError(f"{source}: the space's {name!r} must be {{low: A, high: B}} (with log: true where it fits) "
                          f"or {{choices: [...]}}, not {entry!r}.")
    values = list(entry["choices"]) if "choices" in entry else [entry["low"], entry["high"]]
    problem = refused_value([(name, value) for value in values])
    if problem:
        raise ConfigError(f"{source}: in the space, {problem}")
    if "choices" in entry:
        return Parameter(name=name, choices=tuple(entry["choices"]))
    low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
    if not low < high:
        raise ConfigError(f"{source}: the space's {name!r} has low {low} not below high {high}.")
    if log and low <= 0:
        raise ConfigError(f"{source}: the space's {name!r} is searched on a log scale, so its low must be above 0.")
    return Parameter(name=name, low=low, high=high, log=log, integer=is_integer(annotations[name]))


def read_space(path: Path) -> SearchSpace:
    """The space file at `path`, every entry checked; ConfigError naming the file and the entry otherwise."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"The space file {path} does not exist. Give a YAML file like "
                          "configs/sweeps/fast85.yaml.") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"Cannot read the space file {path} ({' '.join(str(error).split())}).") from None
    if not isinstance(content, dict) or not isinstance(content.get("space"), dict) or not content["space"]:
        raise ConfigError(f"{path} needs a `space:` mapping with one entry per option to search.")
    objective = content.get("objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{path}: the objective is {objective!r}; it must be time_to_target (seconds of training "
                          "to the target accuracy, minimized) or accuracy (the best validation accuracy, maximized).")
    study = str(content.get("study") or Path(path).stem)
    return SearchSpace(objective=objective, study=study,
                       parameters=tuple(parameter(name, entry, path) for name, entry in content["space"].items()))
