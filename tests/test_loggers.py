"""The loggers teams use, with the real libraries and offline: what a run logs reaches MLflow's store (read back with
its client), Weights & Biases' offline run folder and Lightning's CSV file, a resume continues the same runs, and a
secret in a tracking address is never written anywhere."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import pytest
import yaml
from helpers import FIGURES

from cifar_lit.reliability.secrets import mask_secrets
from cifar_lit.run.train import fit, main

mlflow_client = pytest.importorskip("mlflow.tracking")
wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def only_run(logdir: Path) -> Path:
    (run_dir,) = logdir.glob("version_*")
    return run_dir


@pytest.mark.slow
def test_mlflow_holds_the_history_the_parameters_and_the_figures_and_a_resume_continues_its_run(tiny_flags, tmp_path):
    flags = [*tiny_flags, *FIGURES, "--target-acc", "1.0", "--logger", "tensorboard", "csv", "mlflow"]
    first = fit([*flags, "--max-epochs", "2"])
    client = mlflow_client.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cifar_lit").experiment_id])
    assert run.info.run_name == first.run_dir.name and run.info.status == "FINISHED"
    history = [metric.value for metric in client.get_metric_history(run.info.run_id, "val/acc")]
    assert len(history) == 2 and max(history) == pytest.approx(first.best_val_acc), "val/acc, epoch by epoch"
    assert run.data.params["lr"] == "0.005" and run.data.params["width"] == "8", "the hyperparameters"
    assert run.data.metrics["hp/test_acc"] == pytest.approx(first.test_acc), "the results beside them"
    figures = {item.path for item in client.list_artifacts(run.info.run_id, "figures/test")}
    assert {"figures/test/confusion_matrix", "figures/test/per_class_accuracy"} <= figures
    (rows,) = [list(csv.DictReader((first.run_dir / "csv" / "metrics.csv").read_text().splitlines()))]
    assert sum(1 for row in rows if row.get("val/acc")) == 2, "Lightning's CSV logger, in <run>/csv/"
    assert list(first.run_dir.glob("events.out.tfevents.*")), "and TensorBoard beside them"

    assert main(["--resume", "last", "--logdir", str(tmp_path / "logs"), "--max-epochs", "3"]) == 0
    (again,) = client.search_runs([client.get_experiment_by_name("cifar_lit").experiment_id])
    assert again.info.run_id == run.info.run_id, "the resume continues the same MLflow run"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3


def wandb_history(run_file: Path) -> dict[str, list[float]]:
    """The history rows of a W&B offline run file: LevelDB's log format (32 KiB blocks of records, each with a
    7-byte header of checksum, length and kind) after W&B's 7-byte file header, each record one of W&B's own
    protobuf `Record`s."""
    data, position, pending, history = run_file.read_bytes(), 7, b"", {}
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_proto.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return history


@pytest.mark.slow
def test_wandb_runs_offline_without_an_account_its_folder_holds_the_metrics_and_a_resume_continues_it(
        tiny_flags, tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    flags = [*tiny_flags, "--target-acc", "1.0", "--logger", "wandb"]
    first = fit([*flags, "--max-epochs", "2"])
    (offline,) = (first.run_dir / "wandb").glob("offline-run-*")
    history = wandb_history(next(offline.glob("run-*.wandb")))
    epochs = [float(row["val_acc"]) for row in csv.DictReader((first.run_dir / "metrics.csv").read_text().splitlines())]
    assert history["val/acc"] == pytest.approx(epochs), "the run's validation accuracy, epoch by epoch"
    assert "train/loss" in history and "test/acc" in history
    run_id = json.loads((first.run_dir / "loggers.json").read_text())["wandb"]
    assert offline.name.endswith(run_id)
    assert main(["--resume", "last", "--logdir", str(tmp_path / "logs"), "--max-epochs", "3"]) == 0
    assert json.loads((first.run_dir / "loggers.json").read_text())["wandb"] == run_id, "the same W&B run"


def test_a_logger_whose_extra_is_missing_is_one_error_naming_the_install_command(tiny_flags, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main([*tiny_flags, "--logger", "tensorboard", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --logger mlflow needs MLflow") and 'pip install -e ".[mlflow]"' in err


def test_secrets_in_addresses_are_masked():
    assert mask_secrets("postgresql://user:hunter2@db.example:5432/db") == "postgresql://user:***@db.example:5432/db"
    assert mask_secrets("https://mlflow.example/?token=abc123&x=1") == "https://mlflow.example/?token=***&x=1"
    assert mask_secrets("sqlite:////tmp/mlflow.db and http://host:5000") == "sqlite:////tmp/mlflow.db and http://host:5000"


@pytest.mark.slow
def test_a_password_in_the_mlflow_address_is_written_nowhere_and_a_resume_asks_for_it(tiny_flags, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    address = "http://alice:hunter2@mlflow.example:5000"
    result = fit([*tiny_flags, "--max-epochs", "1", "--target-acc", "1.0", "--mlflow-uri", address])
    printed = capsys.readouterr()
    written = [path.read_bytes() for path in result.run_dir.rglob("*") if path.is_file()]
    assert all(b"hunter2" not in content for content in written), "no file holds the password"
    assert "hunter2" not in printed.out + printed.err, "nor does anything printed"
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["mlflow_uri"] == \
        "http://alice:***@mlflow.example:5000"
    assert main(["--resume", "last", "--logdir", str(tmp_path / "logs"), "--max-epochs", "2", "--logger",
                 "mlflow"]) == 2
    assert "Give --mlflow-uri again" in capsys.readouterr().err
