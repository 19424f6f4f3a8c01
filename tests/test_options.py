"""Options as declared types from the parser on, the Python entry `cifar_lit.fit` and what it returns, and what a
resume takes from the command line."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY_FLAGS
from pytorch_lightning.callbacks import Callback

import cifar_lit
from cifar_lit.data.options import DataOptions
from cifar_lit.models import resnet
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.run import resume
from cifar_lit.run.config import _docstring_help, parse_options, refused_value
from cifar_lit.run.options import GROUPS, Options, RunOptions, option_names
from cifar_lit.run.train import EXIT_STATUS, RunResult, exit_status, fit, main
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.options import ModelOptions

# ------------------------------------------------------------------------------------------------- declared types


@pytest.mark.parametrize("group", list(GROUPS.values()), ids=list(GROUPS))
def test_every_option_is_a_typed_field_with_its_help(group):
    hints, helps = typing.get_type_hints(group), _docstring_help(group)
    for option in dataclasses.fields(group):
        assert hints[option.name] is not typing.Any, option.name
        assert helps.get(option.name), f"{group.__name__}.{option.name} has no line under Args:"
    assert group.__dataclass_params__.frozen and all(option.kw_only for option in dataclasses.fields(group))


def test_the_parser_gives_typed_groups_and_one_value_for_a_shared_key():
    options = parse_options(["--lr", "0.1", "--batch-size", "64", "--seed", "3", "--max-epochs", "4"])
    assert isinstance(options.model, ModelOptions) and isinstance(options.data, DataOptions)
    assert isinstance(options.run, RunOptions)
    assert options.model.lr == 0.1 and type(options.model.lr) is float, "plain numbers, not jsonargparse's types"
    assert options.model.batch_size == options.data.batch_size == 64 and options.run.seed == options.data.seed == 3
    assert options.given == options.flags == {"lr", "batch_size", "seed", "max_epochs"}


def test_lr_auto_is_a_value_the_recipe_type_holds_and_the_module_refuses_to_train_with():
    assert parse_options(["--lr", "auto"]).model.lr == "auto"
    module = CIFARClassifier(ModelOptions(lr="auto", width=8))
    with pytest.raises(ValueError, match="LR range test"):
        module.peak_lr()


def test_options_of_keywords_route_each_key_to_its_groups_and_refuse_an_unknown_one():
    options = Options.of(width=16, batch_size=32, max_epochs=2, data_dir="somewhere")
    assert (options.model.width, options.model.batch_size, options.data.batch_size) == (16, 32, 32)
    assert options.run.max_epochs == 2 and options.data.data_dir == "somewhere"
    assert options.given == {"width", "batch_size", "max_epochs", "data_dir"}
    with pytest.raises(KeyError, match="batch_sise"):
        Options.of(batch_sise=32)
    assert Options.from_dict(options.as_dict()) == dataclasses.replace(options, given=frozenset()), "round trip"


def test_fit_checks_typed_options_as_the_parser_checks_a_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--max-epochs \(config key 'max_epochs'\) is 0"):
        fit(Options.of(max_epochs=0, logdir=str(tmp_path / "logs")))
    assert not (tmp_path / "logs").exists()


def test_the_value_refused_is_named_among_valid_ones_and_a_config_files_even_where_a_flag_overrides_it():
    assert refused_value([("lr", 0.1), ("width", 16), ("model", "resnet9")]) is None
    assert "--seed (config key 'seed') is -1" in refused_value([("lr", 0.1), ("seed", -1), ("width", 16)])
    assert "is -1" in refused_value([("seed", -1), ("seed", 7)]), "the file's value, checked though a flag wins"


def test_a_network_of_ones_own_is_module_colon_callable_and_a_wrong_one_is_named(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text("from torch import nn\n\ndef wide(num_classes, width):\n"
                                         "    return nn.Linear(3 * 32 * 32, num_classes)\n")
    monkeypatch.chdir(tmp_path)  # importable from the working directory, as train.py finds it
    monkeypatch.setattr(resnet, "MODELS", dict(resnet.MODELS))  # what it registers goes with the test
    assert parse_options(["--model", "my_nets:wide"]).model.model == "my_nets:wide"
    with pytest.raises(ConfigError, match="--model my_nets:narrow .* has no callable 'narrow'"):
        parse_options(["--model", "my_nets:narrow"])
    with pytest.raises(ConfigError, match="--model nets_nowhere:wide .* the module nets_nowhere cannot be imported"):
        parse_options(["--model", "nets_nowhere:wide"])
    with pytest.raises(ConfigError, match="no network named 'vgg'; the networks are resnet18, resnet34, resnet9"):
        parse_options(["--model", "vgg"])


# ------------------------------------------------------------------------------------------------- the Python entry


@pytest.mark.slow
def test_fit_returns_the_runs_folder_accuracies_and_epochs_as_summary_json_has_them(image_folder, tmp_path):
    flags = parse_options([*TINY_FLAGS, "--max-epochs", "2", "--target-acc", "1.0", "--data-dir", str(image_folder),
                           "--logdir", str(tmp_path / "logs")])
    result = cifar_lit.fit(flags)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.outcome == "finished" and not result.stopped and exit_status(result) == 0
    assert result.run_dir.parent == tmp_path / "logs" and result.epochs == summary["epochs_run"] == 2
    assert (result.test_acc, result.best_val_acc) == (summary["test_acc"], summary["best_val_acc"])
    assert result.target_acc == 1.0 and not result.target_reached and result.seconds_to_target is None
    assert summary["command"] == "cifar_lit.fit(...)"
    assert not list(result.run_dir.glob("*.png")), "--no-figures (the tiny runs' flag) draws none"
    assert (result.run_dir / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_says_so_in_its_result(tiny_flags, tmp_path, monkeypatch):
    import os
    import signal

    from pytorch_lightning.callbacks import Callback

    class SignalAtStep(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    result = fit([*tiny_flags, "--max-epochs", "2", "--target-acc", "1.0"], callbacks=[SignalAtStep()])
    assert result.outcome == "stopped" and result.stopped and result.signum == signal.SIGTERM
    assert result.stop_reason == "signal SIGTERM" and result.global_steps == 3 and exit_status(result) == 143
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file()


def test_every_outcome_has_an_exit_status():
    outcomes = typing.get_args(typing.get_type_hints(RunResult)["outcome"])
    assert set(outcomes) - {"stopped"} == set(EXIT_STATUS)
    assert exit_status(RunResult(outcome="stopped", signum=2)) == 130
    assert exit_status(RunResult(outcome="non_finite_loss")) == 3


# ------------------------------------------------------------------------------------------------- resume


def test_every_option_is_in_exactly_one_resume_list():
    lists = {"FROM_THIS_COMMAND": set(resume.FROM_THIS_COMMAND), "MUST_MATCH": set(resume.MUST_MATCH),
             "IN_OPTIMIZER_STATE": set(resume.IN_OPTIMIZER_STATE),
             "MAY_CHANGE_ON_RESUME": set(resume.MAY_CHANGE_ON_RESUME)}
    placed = [name for names in lists.values() for name in names]
    assert sorted(placed) == sorted(option_names()), "each option once, in one list"


@pytest.fixture(scope="module")
def finished(image_folder_master, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resumed")
    data = Path(shutil.copytree(image_folder_master, root / "data"))
    assert main([*TINY_FLAGS, "--data-dir", str(data), "--logdir", str(root / "logs"), "--max-epochs", "1",
                 "--target-acc", "1.0", "--cutout", "4"]) == 0
    (run_dir,) = (root / "logs").glob("version_*")
    return run_dir


@pytest.mark.slow
def test_a_resume_takes_what_it_may_change_keeps_the_optimizer_state_and_records_what_trains(finished, caplog):
    before = yaml.safe_load((finished / "config.yaml").read_text())
    assert main(["--resume", str(finished / "checkpoints" / "last.ckpt"), "--max-epochs", "2", "--lr", "0.3",
                 "--grid-every-n-epochs", "1"]) == 0
    after = yaml.safe_load((finished / "config.yaml").read_text())
    assert after["max_epochs"] == 2 and after["grid_every_n_epochs"] == 1, "MAY_CHANGE_ON_RESUME as given"
    assert after["lr"] == before["lr"] == 0.005, "the optimizer state keeps its LR, and config.yaml says so"
    assert "--lr is ignored when resuming" in caplog.text
    assert after["cutout"] == 4 and after["download"] is False, "the rest as trained; a resume never downloads"
    assert after["resume"] == str(finished / "checkpoints" / "last.ckpt"), "FROM_THIS_COMMAND"


def test_the_trained_options_come_from_config_yaml_else_from_the_checkpoints_copy(tmp_path):
    checkpoint = {"callbacks": {"ConfigRecord": {"config": {"width": 16, "lr": 0.1, "a_key_of_an_older_version": 1}}},
                  "hyper_parameters": {"width": 16, "lr": 0.1}}
    from_checkpoint = resume.trained_options(checkpoint, None, tmp_path / "x.ckpt")
    assert from_checkpoint.model.width == 16 and from_checkpoint.model.lr == 0.1
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("width: 32\nlr: 0.05\n")
    from_yaml = resume.trained_options(checkpoint, tmp_path, tmp_path / "checkpoints" / "last.ckpt")
    assert from_yaml.model.width == 32 and from_yaml.model.lr == 0.05
    (tmp_path / "config.yaml").write_text("width: 0\n")
    with pytest.raises(ConfigError, match="--width"):
        resume.trained_options(checkpoint, tmp_path, tmp_path / "checkpoints" / "last.ckpt")


# ------------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_the_module_loads_from_a_checkpoint_as_lightning_users_load_one(finished):
    (best,) = (finished / "checkpoints").glob("best-*.ckpt")
    module = CIFARClassifier.load_from_checkpoint(best)
    saved = torch.load(best, weights_only=True)
    assert module.options.width == 8 and module.num_classes == 10
    assert all(torch.equal(value, saved["state_dict"][key]) for key, value in module.state_dict().items())


def test_hyperparameters_of_an_older_checkpoint_build_its_network_with_defaults_for_what_it_lacks():
    module = CIFARClassifier.from_hyperparameters({"width": 8, "lr": 0.1, "num_classes": 20}, compile=False)
    assert (module.options.model, module.options.width, module.num_classes) == ("resnet18", 8, 20)
    assert module.hparams.lr == 0.1 and module.hparams.num_classes == 20, "flat, as checkpoints always held them"


# ------------------------------------------------------------------------------------------------- Trainer, config


def test_a_trainer_argument_a_flag_also_sets_is_one_error_naming_both_and_alone_counts_as_the_flag():
    with pytest.raises(ConfigError, match=r"--max-epochs and --trainer.max_epochs both set the Trainer's max_epochs"):
        parse_options(["--max-epochs", "3", "--trainer.max_epochs", "5"])
    alone = parse_options(["--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false"])
    assert alone.run.max_epochs == 5 and alone.run.progress_bar is False and alone.run.trainer == {}
    with pytest.raises(ConfigError, match="--max-epochs"):
        parse_options(["--trainer.max_epochs", "0"])  # then checked as --max-epochs is


def test_help_lists_the_trainer_arguments_under_their_own_heading(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    heading = printed.index("Customize every aspect of training via flags")  # Lightning's Trainer docstring
    for name in ("gradient_clip_val", "accumulate_grad_batches", "max_time", "profiler", "val_check_interval",
                 "overfit_batches"):
        assert printed.index(f"\n  --trainer.{name} ") > heading, name
    assert "--trainer.callbacks" not in printed and "--trainer.logger" not in printed, "the run builds those"


class TrainerSeen(Callback):
    def on_train_start(self, trainer, pl_module):
        self.seen = (trainer.gradient_clip_val, trainer.accumulate_grad_batches, type(trainer.profiler).__name__,
                     trainer.val_check_interval)


@pytest.mark.slow
def test_any_trainer_argument_reaches_the_trainer_is_recorded_and_honoured_on_resume(tiny_flags, tmp_path):
    flags = ["--trainer.gradient_clip_val", "1.0", "--trainer.accumulate_grad_batches", "2", "--trainer.max_time",
             "00:00:05:00", "--trainer.profiler", "simple", "--trainer.val_check_interval", "0.5"]
    first, resumed = TrainerSeen(), TrainerSeen()
    result = fit([*tiny_flags, "--max-epochs", "1", "--target-acc", "1.0", *flags], callbacks=[first])
    assert first.seen == (1.0, 2, "SimpleProfiler", 0.5)
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["trainer"] == {
        "accumulate_grad_batches": 2, "gradient_clip_val": 1.0, "max_time": "00:00:05:00", "profiler": "simple",
        "val_check_interval": 0.5}
    again = fit(["--resume", str(result.run_dir / "checkpoints" / "last.ckpt"), "--max-epochs", "2",
                 "--trainer.gradient_clip_val", "0.5"], callbacks=[resumed])
    assert again.outcome == "finished" and resumed.seen == (0.5, 2, "SimpleProfiler", 0.5), "laid over the run's own"


@pytest.mark.slow
def test_print_config_prints_what_config_yaml_holds_and_it_runs_as_it_is(tiny_flags, tmp_path, capsys):
    flags = [*tiny_flags, "--max-epochs", "1", "--target-acc", "1.0", "--trainer.gradient_clip_val", "1.0"]
    assert fit([*flags, "--print-config"]).outcome == "config_printed"
    printed = capsys.readouterr().out
    assert not list((tmp_path / "logs").glob("version_*")), "nothing run, nothing written"
    resolved = yaml.safe_load(printed)
    assert resolved["precision"] == "32-true" and resolved["channels_last"] is True, "the plan's decisions"
    (tmp_path / "printed.yaml").write_text(printed)
    asked, again = fit(flags), fit(["--config", str(tmp_path / "printed.yaml")])
    assert (asked.run_dir / "config.yaml").read_text() == (again.run_dir / "config.yaml").read_text() == printed
