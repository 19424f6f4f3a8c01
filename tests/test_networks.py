"""Every registered network (--model) through the whole life of a run: it trains, names itself in every record,
resumes, is evaluated, exported and served from the export; a checkpoint and config.yaml that name no network
still load, resume and evaluate as the ResNet18 they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import GRIDS, TINY_FLAGS

from cifar_lit.app.demo import Bundle, Classifier, classify
from cifar_lit.models import MODELS
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reporting.evaluate import main as evaluate
from cifar_lit.run.config import parse_options
from cifar_lit.run.resume import check_matches_checkpoint
from cifar_lit.run.train import main as train


def only_run(logdir: Path) -> Path:
    (run_dir,) = logdir.glob("version_*")
    return run_dir


OWN_NETWORK = "wide_resnet:wide_resnet16_8"  # tests/wide_resnet.py, a network of one's own in one module
NETWORKS = {**{name: "8" for name in MODELS}, OWN_NETWORK: "2"}  # --model -> --width (WRN-16-8: 16, 32, 64 wide)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETWORKS))
def test_each_network_trains_names_itself_resumes_evaluates_exports_and_serves(name, image_folder, tmp_path):
    logdir = tmp_path / "logs"
    flags = [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--target-acc", "1.0",
             "--width", NETWORKS[name]]
    assert train([*flags, "--model", name, "--max-epochs", "1", *GRIDS]) == 0
    run_dir = only_run(logdir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"] == name
    assert json.loads((run_dir / "summary.json").read_text())["model"] == name
    assert torch.load(last, weights_only=True)["hyper_parameters"]["model"] == name
    assert (run_dir / "model_summary.txt").read_text().startswith(f"{name}, width {NETWORKS[name]}, 10 classes")
    assert (run_dir / "gradcam_misclassified.png").is_file(), "Grad-CAM at the network's own layer"

    assert train(["--resume", str(last), "--max-epochs", "2", "--no-figures", "--grid-images", "0"]) == 0, \
        "the resume builds the network it names"  # (its pictures were drawn above)
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2

    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "model_summary.txt").read_text().startswith(f"{name}, width {NETWORKS[name]}")
    space = tmp_path / "space"
    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--export-app", str(space)]) == 0
    bundle = Bundle.load(space)
    assert json.loads((space / "bundle.json").read_text())["model"] == bundle.model == name
    if name == OWN_NETWORK:
        assert (space / "wide_resnet.py").is_file(), "the network's module goes with the demo"
        assert bundle.gradcam_layer == "head", "no gradcam_layer of its own: its last block with spatial output"
    else:
        assert bundle.gradcam_layer == "layer3"
    picture = next((image_folder / "test" / "cat").iterdir())
    classifier = Classifier(bundle)
    top, overlays, _, status = classify(classifier, [str(picture)], k=3, opacity=0.5, layer=classifier.default_layer)
    assert len(top) == 3 and len(overlays) == 1 and status == "Classified 1 image(s)."


@pytest.mark.slow
def test_a_run_that_names_no_network_loads_resumes_and_evaluates_as_resnet18(image_folder, tmp_path):
    """As every run before --model: the checkpoint's hyperparameters, the configuration it carries and config.yaml
    have no `model`."""
    logdir = tmp_path / "logs"
    flags = [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--target-acc", "1.0"]
    assert train([*flags, "--max-epochs", "1"]) == 0
    run_dir = only_run(logdir)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["hyper_parameters"]["model"]
    for state in checkpoint["callbacks"].values():
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            del state["config"]["model"]
    torch.save(checkpoint, last)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["model"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "model_summary.txt").read_text().startswith("resnet18, width 8")
    assert train(["--resume", str(last), "--max-epochs", "2"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "resnet18" and summary["epochs_run"] == 2
    moved = Path(shutil.copy(last, tmp_path / "moved.ckpt"))  # out of its folder: the carried config, no model
    assert train(["--resume", str(moved), "--max-epochs", "3", "--logdir", str(tmp_path / "elsewhere")]) == 0
    assert json.loads((only_run(tmp_path / "elsewhere") / "summary.json").read_text())["model"] == "resnet18"


def test_a_resume_with_another_network_is_refused(tmp_path):
    checkpoint = {"hyper_parameters": {"model": "resnet9"}}
    with pytest.raises(ConfigError, match=r"--model resnet18 does not match .*trained with model=resnet9"):
        check_matches_checkpoint(checkpoint, parse_options([]), tmp_path / "x")
    no_model = {"hyper_parameters": {"width": 64}}  # a checkpoint from before --model: a ResNet18
    check_matches_checkpoint(no_model, parse_options([]), tmp_path / "x")
    with pytest.raises(ConfigError, match=r"--model resnet34 does not match .*trained with model=resnet18"):
        check_matches_checkpoint(no_model, parse_options(["--model", "resnet34"]), tmp_path / "x")
