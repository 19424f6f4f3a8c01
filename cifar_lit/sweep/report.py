"""What a sweep found: a table of the best trials, pictures a person can read (the optimization history, the
parameters' importances, the objective against each parameter: PNG files in the study's folder), and best.yaml, a
config file that `train.py --config best.yaml` runs as it is."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from matplotlib import pyplot as plt

from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reporting.plots import save_figure

TOP = 5  # trials in the table


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs.get("constraint", 0.0) <= 0.0


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete, feasible trials, best first."""
    good = [trial for trial in study.get_trials(deepcopy=False) if feasible(trial) and trial.value is not None]
    return sorted(good, key=lambda trial: trial.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)


def best_so_far(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    found = ranked(study)
    return found[0] if found else None


def shown_value(trial: optuna.trial.FrozenTrial, objective: str) -> str:
    if trial.value is None:
        return "–"
    return f"{trial.value:.4f} val acc" if objective == "accuracy" else f"{trial.value:.1f} s to the target"


def table(study: optuna.Study, objective: str) -> str:
    """The best trials as a markdown table, and how many trials ended in each state."""
    rows = ["| trial | value | parameters | run folder |", "|---:|---|---|---|"]
    for trial in ranked(study)[:TOP]:
        params = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                           for name, value in trial.params.items())
        rows.append(f"| {trial.number} | {shown_value(trial, objective)} | {params} | "
                    f"{trial.user_attrs.get('run_dir', '–')} |")
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        name = "infeasible" if trial.state == optuna.trial.TrialState.COMPLETE and not feasible(trial) \
            else trial.state.name.lower()
        states[name] = states.get(name, 0) + 1
    counts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return "\n".join([*rows, "", f"Trials: {counts or 'none yet'}."])


def save_plot(make: Any, path: Path, study: optuna.Study) -> Path | None:
    """One of Optuna's matplotlib plots as a PNG; None when the study cannot draw it yet (too few trials)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's plots are marked experimental
        try:
            axes = make(study)
        except (ValueError, RuntimeError):
            return None
        if hasattr(axes, "flat"):  # a plot per parameter: Optuna's own layout, with its colour bar
            figure = axes.flat[0].get_figure()
        else:
            figure = axes.get_figure()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)  # Optuna draws through pyplot, which would hold every figure


def plots(study: optuna.Study, folder: Path) -> list[Path]:
    """history.png (the best value over trials), epochs.png (each trial's validation result per epoch, the pruned
    ones ending early), slice.png (the objective against each parameter) and importances.png in `folder`."""
    from optuna.visualization import matplotlib as draw

    finished = [trial for trial in study.get_trials(deepcopy=False) if trial.state.is_finished() and trial.params]
    if not finished:
        return []
    made = [save_plot(draw.plot_optimization_history, folder / "history.png", study),
            save_plot(draw.plot_intermediate_values, folder / "epochs.png", study),
            save_plot(draw.plot_slice, folder / "slice.png", study)]
    if len(finished) > 1:
        made.append(save_plot(draw.plot_param_importances, folder / "importances.png", study))
    return [path for path in made if path is not None]


def best_config(study: optuna.Study, base: dict[str, Any], folder: Path) -> Path | None:
    """best.yaml: the sweep's options (`base`, config.yaml's keys) with the best trial's parameters, a config file
    train.py runs as is."""
    best = best_so_far(study)
    if best is None:
        return None
    path = folder / "best.yaml"
    header = (f"# The best trial ({best.number}) of the sweep {study.study_name}: "
              f"{shown_value(best, study.user_attrs.get('space', {}).get('objective', ''))}.\n"
              "# Run it: python train.py --config best.yaml\n")
    write_text_atomic(path, header + yaml.safe_dump({**base, **best.params}, sort_keys=False))
    return path


def report(study: optuna.Study, folder: Path, base: dict[str, Any]) -> str:
    """The table, the plots and best.yaml of `study`, written into `folder`; the words to print. best.yaml starts
    from the options the study was created with (its `base`), else from `base`."""
    folder.mkdir(parents=True, exist_ok=True)
    objective = study.user_attrs.get("space", {}).get("objective", "time_to_target")
    written = [*plots(study, folder), best_config(study, study.user_attrs.get("base") or base, folder)]
    text = table(study, objective)
    write_text_atomic(folder / "report.md", f"# Sweep {study.study_name}\n\n{text}\n")
    files = ", ".join(str(path) for path in written if path is not None)
    return f"{text}\n\nWrote {folder / 'report.md'}{', ' + files if files else ''}."
