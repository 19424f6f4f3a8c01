"""The allowed values of the training options, as types on the constructor signatures.

jsonargparse checks a value against its annotation when it parses flags and config files, and `--help` shows the
type, so the range of an option lives beside its default. `ALLOWED` says each range in words for error messages.
Parsed values come back as instances of these int/float subclasses; `cifar_lit.run.config` turns them into plain
numbers, so configs and checkpoints hold only built-in types.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    restricted_number_type,
)

INFINITY = float("inf")
# jsonargparse's PositiveFloat and NonNegativeFloat take .inf (and a YAML .inf is easy to write); these do not.
PositiveFloat = restricted_number_type("FinitePositiveFloat", float, [(">", 0), ("<", INFINITY)],
                                       docstring="A finite number > 0.")
NonNegativeFloat = restricted_number_type("FiniteNonNegativeFloat", float, [(">=", 0), ("<", INFINITY)],
                                          docstring="A finite number >= 0.")
Fraction = restricted_number_type("Fraction", float, [(">", 0), ("<=", 1)],
                                  docstring="A fraction in (0, 1], e.g. 0.85 for 85%.")
FractionBelowOne = restricted_number_type("FractionBelowOne", float, [(">=", 0), ("<", 1)],
                                          docstring="A number in [0, 1).")
Seed = restricted_number_type("Seed", int, [(">=", 0), ("<=", 2**32 - 1)],
                              docstring="A seed in [0, 2**32 - 1] (what numpy and Lightning's seed_everything take).")
Epochs = restricted_number_type("Epochs", int, [(">=", 1), ("<=", 10_000)], docstring="Epochs, 1 to 10,000.")

ALLOWED: dict[Any, str] = {
    PositiveInt: "an integer >= 1",
    NonNegativeInt: "an integer >= 0",
    PositiveFloat: "a finite number > 0",
    NonNegativeFloat: "a finite number >= 0",
    Seed: "an integer from 0 to 4294967295",
    Epochs: "an integer from 1 to 10000",
    Fraction: "a fraction in (0, 1], e.g. 0.85 for 85%",
    FractionBelowOne: "a number in [0, 1)",
    ClosedUnitInterval: "a fraction in [0, 1]",
    OpenUnitInterval: "a number in (0, 1), e.g. 0.999",
}

__all__ = ["ALLOWED", "ClosedUnitInterval", "Epochs", "Fraction", "FractionBelowOne", "NonNegativeFloat",
           "NonNegativeInt", "OpenUnitInterval", "PositiveFloat", "PositiveInt", "Seed", "allowed_values",
           "from_values", "plain"]

Group = TypeVar("Group")


def allowed_values(annotation: Any) -> str | None:
    """What `annotation` accepts, in words ("an integer >= 1", "one of tensor, pil"); None for unrestricted types."""
    if annotation in ALLOWED:
        return ALLOWED[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin is list and args and typing.get_origin(args[0]) is Literal:
        return "one or more of " + ", ".join(str(arg) for arg in typing.get_args(args[0]))
    if origin in (Union, types.UnionType):
        described = [allowed_values(arg) for arg in args if arg is not type(None)]
        if described and all(part is not None for part in described):
            return " or ".join(described) + (" (or null)" if type(None) in args else "")
    return None


def plain(value: Any) -> Any:
    """A parsed value as a built-in type: the restricted int/float subclasses become int and float."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def from_values(group: type[Group], values: Mapping[str, Any]) -> Group:
    """An options dataclass from flat saved keys (a config.yaml, a checkpoint's hyperparameters): the keys it has, its
    defaults for the ones a file of an older run lacks. Keys of other groups are left to them."""
    names = {field.name for field in dataclasses.fields(group)}  # type: ignore[arg-type]
    return group(**{key: plain(value) for key, value in values.items() if key in names})
