from pathlib import Path

import pytest
import yaml

from cifar_lit.run.config import build_parser, parse_options

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_the_presets_exist():
    assert {"default.yaml", "fast85.yaml", "best.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_parses_and_is_in_range(path):
    assert parse_options(["--config", str(path)]).config == (str(path),)


def test_default_yaml_is_what_train_py_runs_without_a_config():
    defaults = build_parser().get_defaults()
    written = yaml.safe_load((Path(CONFIGS[0]).parent / "default.yaml").read_text())
    assert written, "default.yaml is empty"
    for key, value in written.items():
        assert defaults[key] == value, f"default.yaml says {key}={value!r}, the built-in default is {defaults[key]!r}"


def test_command_line_overrides_the_config_file(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("max_epochs: 4\nbatch_size: 64\n")
    options = parse_options(["--config", str(preset), "--batch-size", "32"])
    assert options.run.max_epochs == 4 and options.model.batch_size == options.data.batch_size == 32


def test_later_config_files_override_earlier_ones(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("lr: 0.1\nseed: 3\n")
    second.write_text("lr: 0.3\n")
    options = parse_options(["--config", str(first), "--config", str(second)])
    assert options.model.lr == 0.3 and options.run.seed == options.data.seed == 3
