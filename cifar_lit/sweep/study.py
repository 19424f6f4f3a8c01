"""Where a sweep's study lives, and the study itself: Optuna's own storage and samplers.

The default is an SQLite file beside the runs (`<logdir>/sweeps.db`), which needs no set-up. A `postgresql://` (or
any SQLAlchemy) address lets any number of workers on any number of machines share one study: each runs the same
command. Heartbeats mark the trial of a worker that died as failed, and the next worker to start a trial retries its
parameters; connections are checked before use, so an idle database does not end a worker.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.secrets import mask_secrets
from cifar_lit.sweep.space import SearchSpace

RETRIES = 2  # times the parameters of a trial whose worker died are tried again
CREATE_TRIES = 8  # workers that start together may race to create the tables: the loser tries again


def default_storage(logdir: Path) -> str:
    return f"sqlite:///{(logdir / 'sweeps.db').absolute()}"


def open_storage(url: str, heartbeat_seconds: int) -> RDBStorage:
    """The study's storage, with heartbeats and retries of dead workers' trials. Two workers that start together
    may both create the tables; the one that loses the race tries again after a random pause."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats since Optuna 2.9
                return RDBStorage(url, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
                                  engine_kwargs={"pool_pre_ping": True})
        except Exception as error:  # SQLAlchemy's errors: a table created meanwhile, the server not up yet
            if attempt == CREATE_TRIES - 1:
                raise ConfigError(f"Cannot open the study storage {mask_secrets(url)} "
                                  f"({type(error).__name__}: {' '.join(str(error).split())[:300]}). Check the address "
                                  "and that the database server is running.") from None
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
    raise AssertionError("unreachable")


def sampler_for(space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE; for time_to_target, a trial that did not reach the target is infeasible (its constraint above 0), which
    the sampler learns from without taking it for a good time."""
    if space.objective == "time_to_target":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=lambda trial: [
            trial.user_attrs.get("constraint", 1.0)])
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """Optuna's median pruner (the default), Hyperband, or none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(storage: RDBStorage, name: str, space: SearchSpace, *, pruner: optuna.pruners.BasePruner,
               base: dict[str, Any], seed: int | None = None) -> optuna.Study:
    """The study `name`, created the first time (once, whatever the number of workers starting), loaded after; a
    study whose space differs from the file's is refused, naming the difference. `base`: the trials' options as
    config.yaml holds them, kept by the study's creator for its best.yaml."""
    study = optuna.create_study(storage=storage, study_name=name, direction=space.direction, load_if_exists=True,
                                sampler=sampler_for(space, seed), pruner=pruner)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space.as_dict())
        study.set_user_attr("base", base)
    elif stored != space.as_dict():
        raise ConfigError(f"The study {name!r} in {mask_secrets(str(storage.url))} searched another space: "
                          f"{difference(stored, space.as_dict())}. Give --study a new name to start a new study, or "
                          "restore the space file.")
    return study


def difference(stored: dict, now: dict) -> str:
    """The first difference between a study's space and the file's, in words."""
    if stored.get("objective") != now.get("objective"):
        return f"its objective was {stored.get('objective')}, the file's is {now.get('objective')}"
    before, after = stored.get("space", {}), now.get("space", {})
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            return f"{name} was {before.get(name, 'not searched')}, the file has {after.get(name, 'nothing')}"
    return "the spaces differ"
