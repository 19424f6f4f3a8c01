"""sweep.py: search the recipe across trials and machines.

    python sweep.py --space configs/sweeps/fast85.yaml --trials 40 [--storage URL] [--study NAME] [train.py flags]
    python sweep.py --report [--space FILE] [--storage URL] [--study NAME] [train.py flags]

Every flag that is not the sweep's own goes to each trial as it would go to train.py. Running the same command again
continues the study (the trials done count towards --trials); several workers, on one machine or many, share a study
through one --storage. Ctrl-C or SIGTERM ends the running trial as a stopped run and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import optuna

from cifar_lit.reliability.errors import ConfigError, UserError
from cifar_lit.reliability.secrets import mask_secrets
from cifar_lit.reliability.signals import Interrupted, SignalGuard
from cifar_lit.reporting.provenance import command_line
from cifar_lit.run.config import parse_options
from cifar_lit.run.options import Options
from cifar_lit.sweep.report import best_so_far, report, shown_value
from cifar_lit.sweep.space import SearchSpace, read_space
from cifar_lit.sweep.study import default_storage, open_storage, open_study, pruner_for
from cifar_lit.sweep.trials import SweepStopped, TrialFailed, run_trial

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep.py", allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                     epilog="Every other flag goes to each trial as to train.py: `python train.py "
                                            "--help` lists them. More: docs/sweeps.md.")
    parser.add_argument("--space", type=Path, help="the space file (YAML): objective, study name, options to search")
    parser.add_argument("--trials", type=int, help="trials of the study in all (those done before count)")
    parser.add_argument("--storage", help="the study's database (default: sqlite:///<logdir>/sweeps.db); "
                                          "postgresql://... lets workers on several machines share it")
    parser.add_argument("--study", help="the study's name (default: the space file's study:)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="how trials that cannot win are stopped early (default: median)")
    parser.add_argument("--startup-trials", type=int, default=5,
                        help="trials the median pruner waits for before it prunes (default: 5)")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seconds between a worker's signs of life; a trial silent for three times that is failed "
                             "and its parameters tried again (default: 60)")
    parser.add_argument("--sampler-seed", type=int, help="seed of the sampler (default: none)")
    parser.add_argument("--report", action="store_true", help="only write the report of the study and exit")
    return parser


def one_device(devices: int | str) -> bool:
    """--devices 1, or one device named by index ("0," or "[3]"); "auto" and "-1" may mean several."""
    text = str(devices).strip()
    return text == "1" or ("," in text or "[" in text) and len([part for part in text.strip("[]").split(",")
                                                                if part.strip()]) == 1


def check_trial_flags(base: Options) -> None:
    """The flags given to every trial: one device each, and the run folder's name and resume are the sweep's."""
    run = base.run
    for name, value in (("--run-name", run.run_name), ("--resume", run.resume), ("--find-lr", run.find_lr or None),
                        ("--print-config", run.print_config or None), ("--dry-run", run.dry_run or None)):
        if value:
            raise ConfigError(f"{name} is not for a sweep's trials: the sweep names each trial's folder and "
                              "continues its study when the same command runs again. Leave out that flag.")
    many = [flag for flag, more in ((f"--gpus {run.gpus}", (run.gpus or 0) > 1),
                                    (f"--devices {run.devices}", not one_device(run.devices)),
                                    (f"--num-nodes {run.num_nodes}", run.num_nodes > 1)) if more]
    if many:
        raise ConfigError(f"A sweep's trial runs on one device, and {' '.join(many)} asks for more. Run one worker "
                          "per GPU instead, each the same command on its own GPU (CUDA_VISIBLE_DEVICES=0 python "
                          "sweep.py ..., CUDA_VISIBLE_DEVICES=1 python sweep.py ..., sharing one --storage).")


def retried(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed trials whose parameters were queued again (a dead worker's, by the heartbeat's retry; a
    trial a signal stopped, by this module): they do not count towards --trials, their retry does."""
    again = {trial.system_attrs.get("failed_trial") for trial in trials}
    again |= {trial.user_attrs.get("retry_of") for trial in trials}
    return {number for number in again if number is not None}


def tally(study: optuna.Study) -> tuple[int, int, int]:
    """(trials done, running, waiting). Done: complete, pruned, or failed and not retried."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    done = sum(1 for trial in trials if trial.state in DONE
               or (trial.state == optuna.trial.TrialState.FAIL and trial.number not in again))
    running = sum(1 for trial in trials if trial.state == optuna.trial.TrialState.RUNNING)
    waiting = sum(1 for trial in trials if trial.state == optuna.trial.TrialState.WAITING)
    return done, running, waiting


def progress_line(trial: optuna.trial.FrozenTrial, study: optuna.Study, objective: str) -> str:
    params = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                       for name, value in trial.params.items())
    if trial.state == optuna.trial.TrialState.PRUNED:
        result = f"pruned: {trial.user_attrs.get('pruned')}"
    elif trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs.get("constraint", 0.0) > 0:
        result = f"infeasible: the target not reached ({trial.value:.1f} s of training)"
    elif trial.state == optuna.trial.TrialState.COMPLETE:
        result = shown_value(trial, objective)
    else:
        result = f"{trial.state.name.lower()}: {trial.user_attrs.get('failure', 'see the log above')}"
    best = best_so_far(study)
    best_text = f"trial {best.number}, {shown_value(best, objective)}" if best else "none feasible yet"
    return f"trial {trial.number}: {params} -> {result} | best so far: {best_text}"


def sweep(study: optuna.Study, *, base: Options, space: SearchSpace, trials: int, study_dir: Path, command: str,
          heartbeat_seconds: int) -> None:
    """Trials one after the other in this process until the study has `trials` done. When the last ones run in
    other workers, this one waits for them: a worker that dies comes back as a waiting retry, which it then runs."""
    def objective(trial: optuna.Trial) -> float:
        best = best_so_far(study) if space.objective == "time_to_target" else None
        try:
            outcome = run_trial(trial, base=base, space=space, study_dir=study_dir, command=command,
                                time_limit=best.value if best is not None else None)
        except Interrupted as stop:  # before the trial's run had a folder: nothing of it to keep
            stopped(trial, stop.signum)
        trial.set_user_attr("run_dir", str(outcome.result.run_dir))
        trial.set_user_attr("constraint", 0.0 if outcome.feasible else 1.0)
        if outcome.result.outcome == "stopped":
            stopped(trial, outcome.result.signum or signal.SIGTERM)
        if outcome.pruned:
            trial.set_user_attr("pruned", outcome.pruned)
            raise optuna.TrialPruned(outcome.pruned)
        if outcome.value is None:
            trial.set_user_attr("failure", f"the run ended as {outcome.result.outcome}")
            raise TrialFailed(f"trial {trial.number}: the run ended as {outcome.result.outcome}")
        return outcome.value

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(progress_line(trial, study, space.objective), flush=True)

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, its parameters queued again
        done, running, waiting = tally(study)
        if done >= trials:
            return
        if done + running >= trials and not waiting:
            time.sleep(heartbeat_seconds)  # the last trials run elsewhere; one whose worker dies comes back
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[show])


def stopped(trial: optuna.Trial, signum: int) -> NoReturn:
    """A signal stopped the trial: it ends failed in the study, its parameters queued to run first next time."""
    trial.set_user_attr("failure", f"stopped by signal {signum}")
    trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    raise SweepStopped(signum)


def load_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = ", ".join(summary.study_name for summary in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(f"There is no study {name!r} in {mask_secrets(url)} (its studies: {known}). Give --study "
                          "one of those, or the --storage and --logdir the sweep ran with.") from None


class NoTracebackForAStop(logging.Filter):
    """Optuna logs a failed trial with its traceback; a trial a signal stopped needs only its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SweepStopped):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_optuna() -> None:
    """The progress line says what Optuna's per-trial INFO lines say; its warnings stay."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # a child logger's records pass its parent's handlers
        if not any(isinstance(existing, NoTracebackForAStop) for existing in handler.filters):
            handler.addFilter(NoTracebackForAStop())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, train_flags = build_parser().parse_known_args(argv)
    quiet_optuna()
    guard = SignalGuard()
    guard.install()  # between trials a signal ends the sweep at once; during one, the run stops and saves first
    try:
        base = parse_options(train_flags)
        check_trial_flags(base)
        space = read_space(args.space) if args.space else None
        name = args.study or (space.study if space else None)
        if name is None:
            raise ConfigError("Give --space FILE (its study: names the study) or --study NAME.")
        if not args.report and (space is None or args.trials is None or args.trials < 1):
            raise ConfigError("Give --space FILE and --trials N (at least 1) to run a sweep; --report alone reports.")
        url = args.storage or default_storage(Path(base.run.logdir))
        database = Path(url.removeprefix("sqlite:///"))
        if args.report and url.startswith("sqlite:///") and not database.is_file():
            raise ConfigError(f"There is no study database at {database}. Give the --logdir (or --storage) the sweep "
                              "ran with.")
        storage = open_storage(url, args.heartbeat)
        study_dir = Path(base.run.logdir) / "sweeps" / name
        if args.report:
            print(report(load_study(storage, name, url), study_dir, base.record()))
            return 0
        study = open_study(storage, name, space, pruner=pruner_for(args.pruner, args.startup_trials),
                           base=base.record(), seed=args.sampler_seed)
        done = tally(study)[0]
        print(f"Study {name} in {mask_secrets(url)}: {done} of {args.trials} trial(s) done; objective "
              f"{space.objective} ({space.direction}); trials in {study_dir}.", flush=True)
        started = time.perf_counter()
        sweep(study, base=base, space=space, trials=args.trials, study_dir=study_dir,
              command=mask_secrets(command_line(argv, "sweep.py")), heartbeat_seconds=args.heartbeat)
        print(f"Sweep done in {time.perf_counter() - started:.0f} s.\n{report(study, study_dir, base.record())}",
              flush=True)
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SweepStopped as stop:
        print(f"Sweep stopped by signal {stop.signum}: the running trial was saved as a stopped run and marked "
              "failed in the study. Run the same command again to continue: its parameters run first.", file=sys.stderr)
        return 128 + stop.signum
    except Interrupted as stop:
        print(f"Sweep stopped by signal {stop.signum} between trials. Run the same command again to continue.",
              file=sys.stderr)
        return 128 + stop.signum
    finally:
        guard.uninstall()
