"""sweep.py: a study of tiny trials on the CPU, each a normal run folder; the space file's mistakes; pruning; resume
after SIGTERM; the report and its best.yaml; optuna-dashboard's server; two workers sharing a real PostgreSQL study,
one of them killed with SIGKILL mid-trial."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import yaml
from helpers import ROOT, TINY_FLAGS, python, wait_until, with_extra_callback

from cifar_lit.run.config import parse_options
from cifar_lit.run.train import fit
from cifar_lit.sweep.cli import main
from cifar_lit.sweep.space import read_space
from cifar_lit.sweep.study import open_storage, open_study, pruner_for
from cifar_lit.sweep.trials import run_trial

POSTGRES = os.environ.get("CIFAR_LIT_TEST_POSTGRES")
LR_SPACE = {"objective": "accuracy", "study": "tiny", "space": {"lr": {"low": 0.002, "high": 0.01, "log": True}}}


def space_file(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def stored(logdir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{logdir / 'sweeps.db'}")


def created(logdir: Path, space: Path, pruner: str = "none", startup_trials: int = 0) -> optuna.Study:
    """The study of `space` in `logdir`'s default SQLite file, as sweep.py creates it, before any trial."""
    return open_study(open_storage(f"sqlite:///{logdir / 'sweeps.db'}", 60), "tiny", read_space(space),
                      pruner=pruner_for(pruner, startup_trials), base={})


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in study.get_trials()]


@pytest.mark.parametrize(("space", "flags", "named"), [
    ({"lr_rate": {"low": 0.1, "high": 1.0}}, [], "'lr_rate' is not an option"),
    ({"devices": {"choices": [1, 2]}}, [], "'devices' is the sweep's own"),
    ({"lr": {"low": -1.0, "high": 1.0}}, [], "lr"),
    ({"batch_size": {"choices": [128, 0]}}, [], "batch_size"),
    ({"max_epochs": {"low": 1.5, "high": 4}}, [], "(config key 'max_epochs') is 1.5, but it must be an integer"),
    ({"label_smoothing": {"low": 0.0, "high": 0.2, "log": True}}, [], "log scale"),
    ({"lr": 0.1}, [], "must be {low: A, high: B}"),
    ({"lr": {"low": 0.1, "high": 1.0}}, ["--devices", "2"], "--devices 2 asks for more"),
    ({"lr": {"low": 0.1, "high": 1.0}}, ["--run-name", "mine"], "--run-name is not for a sweep"),
    ({"lr": {"low": 0.1, "high": 1.0}}, ["--trials", "0"], "--trials N (at least 1)"),
])
def test_a_mistake_in_the_space_or_the_flags_is_one_error_before_any_trial(tiny_flags, tmp_path, capsys, space, flags,
                                                                           named):
    path = space_file(tmp_path, {"objective": "accuracy", "space": space})
    trials = [] if "--trials" in flags else ["--trials", "2"]
    assert main(["--space", str(path), *trials, *flags, *tiny_flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and named in error
    assert not (tmp_path / "logs").exists(), "nothing written: no database, no trial folder"


def test_a_report_of_a_study_that_is_not_there_names_what_is(tiny_flags, tmp_path, capsys):
    logdir = tmp_path / "logs"
    assert main(["--report", "--study", "tiny", "--logdir", str(logdir)]) == 2
    assert f"There is no study database at {logdir / 'sweeps.db'}" in capsys.readouterr().err
    assert not logdir.exists()
    created(logdir, space_file(tmp_path, LR_SPACE))
    assert main(["--report", "--study", "tiny2", "--logdir", str(logdir)]) == 2
    error = capsys.readouterr().err
    assert "There is no study 'tiny2' in sqlite:///" in error and "(its studies: tiny)" in error


def test_an_objective_that_is_neither_is_named(tmp_path):
    path = space_file(tmp_path, {**LR_SPACE, "objective": "speed"})
    with pytest.raises(Exception, match="the objective is 'speed'; it must be time_to_target .* or accuracy"):
        read_space(path)


@pytest.mark.slow
def test_trials_are_run_folders_of_the_default_sqlite_study_and_nothing_of_one_outlives_it(tiny_flags, tmp_path,
                                                                                          capsys, monkeypatch):
    modules: list[weakref.ref] = []

    class KeepRef(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            modules.append(weakref.ref(pl_module))
            modules.append(weakref.ref(trainer))

    with_extra_callback(monkeypatch, KeepRef())  # one callback in every trial, alive after all of them
    path = space_file(tmp_path, LR_SPACE)
    assert main(["--space", str(path), "--trials", "2", "--pruner", "none", *tiny_flags, "--max-epochs", "1"]) == 0
    out = capsys.readouterr().out
    study, folder = stored(tmp_path / "logs"), tmp_path / "logs" / "sweeps" / "tiny"
    assert states(study) == ["COMPLETE", "COMPLETE"]
    for trial in study.get_trials():
        run_dir = folder / f"trial_{trial.number:03d}"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["lr"] == trial.params["lr"], "the trial's parameter is the run's option"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["trial"]["number"] == trial.number and summary["trial"]["params"] == trial.params
        assert summary["best_val_acc"] == pytest.approx(trial.value)
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert f"trial {trial.number}: lr=" in out
    assert "best so far: trial" in out
    gc.collect()
    assert len(modules) == 4 and all(ref() is None for ref in modules), "a finished trial's module and Trainer freed"

    for picture in ("history.png", "epochs.png", "slice.png", "importances.png"):
        assert (folder / picture).read_bytes().startswith(b"\x89PNG")
    best = max(study.get_trials(), key=lambda trial: trial.value)
    (folder / "best.yaml").unlink()
    assert main(["--report", "--study", "tiny", "--logdir", str(tmp_path / "logs")]) == 0
    assert f"| {best.number} | {best.value:.4f} val acc" in capsys.readouterr().out
    again = fit(["--config", str(folder / "best.yaml"), "--logdir", str(tmp_path / "again")])
    assert again.outcome == "finished"
    assert yaml.safe_load((again.run_dir / "config.yaml").read_text())["lr"] == best.params["lr"]


def test_a_study_whose_space_changed_is_refused_unless_study_names_a_new_one(tiny_flags, tmp_path, capsys):
    logdir = tmp_path / "logs"
    created(logdir, space_file(tmp_path, LR_SPACE))
    changed = {**LR_SPACE, "space": {"lr": {"low": 0.001, "high": 0.01, "log": True}}}
    path = space_file(tmp_path, changed)
    assert main(["--space", str(path), "--trials", "1", *tiny_flags, "--max-epochs", "1"]) == 2
    assert "searched another space: lr was {'low': 0.002" in capsys.readouterr().err
    assert not (logdir / "sweeps").exists()
    assert main(["--space", str(path), "--trials", "1", "--study", "new", *tiny_flags, "--max-epochs", "1"]) == 0
    assert states(stored(logdir, "new")) == ["COMPLETE"]


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_that_cannot_win_and_its_folder_says_so(tiny_flags, tmp_path):
    logdir = tmp_path / "logs"
    space = {**LR_SPACE, "space": {"lr": {"low": 1.0e-7, "high": 0.01, "log": True}}}
    path = space_file(tmp_path, space)
    study = created(logdir, path, "median", 1)
    study.enqueue_trial({"lr": 0.005})  # learns: about 50% after an epoch on this data
    study.enqueue_trial({"lr": 1.0e-7})  # learns nothing: chance after its first epoch
    assert main(["--space", str(path), "--trials", "2", "--startup-trials", "1", *tiny_flags,
                 "--max-epochs", "3"]) == 0
    assert states(stored(logdir)) == ["COMPLETE", "PRUNED"]
    run_dir = logdir / "sweeps" / "tiny" / "trial_001"
    trial = json.loads((run_dir / "trial.json").read_text())
    assert trial["state"] == "pruned" and "the pruner stopped it after epoch" in trial["pruned"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trial"]["state"] == "pruned" and summary["epochs_run"] < 3, "stopped before its schedule's end"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file(), "checkpoints kept, as for a stopped run"


def test_a_time_to_target_trial_slower_than_the_best_one_is_stopped_at_once(tiny_flags, tmp_path):
    study = optuna.create_study()
    space = read_space(space_file(tmp_path, {**LR_SPACE, "objective": "time_to_target"}))
    outcome = run_trial(study.ask(), base=parse_options([*tiny_flags, "--max-epochs", "3"]), space=space,
                        study_dir=tmp_path / "study", command="test", time_limit=0.0)
    assert "passed the best trial's 0.0 s" in outcome.pruned
    assert outcome.result.global_steps == 1, "stopped after its first step"
    assert not outcome.feasible


def sweep_process(flags: list[str]) -> subprocess.Popen:
    return python(["sweep.py", *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_ends_the_running_trial_as_a_stopped_run_and_the_same_command_continues(tiny_flags, tmp_path):
    logdir = tmp_path / "logs"
    flags = ["--space", str(space_file(tmp_path, LR_SPACE)), "--trials", "1", "--pruner", "none", *tiny_flags,
             "--max-epochs", "40"]
    process = sweep_process(flags)
    first = logdir / "sweeps" / "tiny" / "trial_000"
    wait_until(lambda: (first / "metrics.csv").is_file(), process)  # an epoch done: mid-training
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Run the same command again to continue" in err and "Traceback" not in err
    study = stored(logdir)
    (stopped, queued) = study.get_trials()
    assert stopped.state.name == "FAIL" and stopped.user_attrs["failure"] == "stopped by signal 15"
    trial = json.loads((first / "trial.json").read_text())
    assert trial["state"] == "stopped" and (first / "checkpoints" / "last.ckpt").is_file(), "folder and study agree"
    assert queued.state.name == "WAITING" and queued.system_attrs["fixed_params"] == stopped.params

    assert main([*flags[:-1], "1"]) == 0, "the same command (shorter trials), again"
    study = stored(logdir)
    assert states(study) == ["FAIL", "COMPLETE"], "the stopped trial does not count; its parameters run again"
    assert study.trials[1].params == stopped.params


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_optuna_dashboard_lists_the_study(tmp_path):
    created(tmp_path, space_file(tmp_path, LR_SPACE))
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")  # the environment's own, activated or not
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: connects(port), server, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as response:
            studies = json.load(response)["study_summaries"]
        assert [study["study_name"] for study in studies] == ["tiny"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def connects(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: .ci/run starts one and sets CIFAR_LIT_TEST_POSTGRES")
def test_two_workers_share_a_postgresql_study_and_a_killed_workers_trial_is_retried(image_folder, tmp_path):
    name = f"two-workers-{os.getpid()}-{time.time_ns()}"
    storage = open_storage(POSTGRES, 60)
    logdirs = [tmp_path / "machine_a", tmp_path / "machine_b"]  # as on two machines: each its own run folders
    common = ["--space", str(space_file(tmp_path, LR_SPACE)), "--study", name, "--storage", POSTGRES,
              "--trials", "4", "--pruner", "none", "--heartbeat", "1", *TINY_FLAGS, "--data-dir", str(image_folder)]
    workers = [sweep_process([*common, "--logdir", str(logdir), "--max-epochs", "3"]) for logdir in logdirs]
    doomed = workers[0]

    def running_in_doomed() -> list[optuna.trial.FrozenTrial]:
        """The doomed worker's trial, an epoch into training, once it has finished one trial of its own."""
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except KeyError:
            return []
        mine = [trial for trial in trials if trial.user_attrs.get("worker", "").endswith(f":{doomed.pid}")]
        if not any(trial.state.name == "COMPLETE" for trial in mine):
            return []
        return [trial for trial in mine if trial.state.name == "RUNNING"
                and (logdirs[0] / "sweeps" / name / f"trial_{trial.number:03d}" / "metrics.csv").is_file()]

    try:
        wait_until(running_in_doomed, doomed)
        (killed,) = running_in_doomed()
        doomed.kill()
        doomed.wait()
        out, err = workers[1].communicate(timeout=240)
    finally:  # no worker outlives the test, whatever failed
        for worker in workers:
            worker.kill()
            worker.wait()
    assert workers[1].returncode == 0, err

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    assert len({trial.number for trial in trials}) == len(trials), "trial numbers are unique"
    assert sum(trial.state.name == "COMPLETE" for trial in trials) == 4, "the count asked for"
    assert study.trials[killed.number].state.name == "FAIL", "the killed worker's trial, failed by its heartbeat"
    (retry,) = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed.number]
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    assert retry.user_attrs["worker"].endswith(f":{workers[1].pid}"), "retried by the other worker"
    assert {trial.user_attrs["worker"].split(":")[-1] for trial in trials if trial.state.name == "COMPLETE"} == {
        str(doomed.pid), str(workers[1].pid)}, "both workers ran trials"
    password = POSTGRES.split(":")[2].split("@")[0]
    written = [path for path in tmp_path.rglob("*") if path.is_file() and password.encode() in path.read_bytes()]
    assert not written and password not in out + err, "the database password is never written or printed"
    assert "postgresql://postgres:***@" in out
