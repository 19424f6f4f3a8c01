"""evaluate.py's work: a shareable report of a checkpoint, top-3 classes of the user's images, and run comparisons.

    python evaluate.py --ckpt PATH [--data-dir DIR] [--out DIR] [--tta] [--gpus N]
    python evaluate.py --ckpt PATH --images a.png b.jpg
    python evaluate.py --compare RUN_DIR RUN_DIR ... [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cifar_lit.data.sources import NAMES, Split, open_dataset
from cifar_lit.hardware.plan import single_device
from cifar_lit.reliability.checkpoints import checkpoint_file, run_dir_of
from cifar_lit.reliability.errors import ConfigError, DataError, UserError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reporting.export_app import write_app_folder
from cifar_lit.reporting.gradcam import DEFAULT_LAYER, maps_for_predictions, network_layer, resolve_layer
from cifar_lit.reporting.history import read_history_csv
from cifar_lit.reporting.inference import (
    TrainedModel,
    evaluate_images,
    load_trained_model,
    model_inputs,
)
from cifar_lit.reporting.model_summary import write_model_summary
from cifar_lit.reporting.plots import (
    accuracy_and_loss_figure,
    confusion_matrix_figure,
    curves_figure,
    gradcam_grid_figure,
    per_class_accuracy_figure,
    prediction_grid_figure,
    save_figure,
    spread_over_classes,
)
from cifar_lit.reporting.predictions import picture_paths, predict, write_predictions
from cifar_lit.reporting.provenance import command_line, device_description, git_commit, versions

GRID_IMAGES = 30  # three per class


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit 2 with a traceback-free line
        raise ConfigError(f"{message}. Run `python evaluate.py --help` for the accepted flags.")


def positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evaluate.py", description="Evaluate a cifar_lit checkpoint, classify images, or compare "
                                                     "runs.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", type=Path, help="checkpoint written by train.py")
    what.add_argument("--compare", type=Path, nargs="+", metavar="RUN_DIR", help="run folders (version_N) to compare")
    parser.add_argument("--images", type=Path, nargs="+", metavar="FILE_OR_DIR",
                        help="classify these pictures (files, or every picture in a folder) with --ckpt and print "
                             "their top classes, or write them with --output")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="with --images: write one row per picture to FILE, CSV (.csv) or JSON (.json)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="with --images: classes per picture")
    parser.add_argument("--data-dir", type=Path, help="data folder of the same data set (default: the one the run "
                                                      "was trained on)")
    parser.add_argument("--out", type=Path, help="report folder (default: <run>/report, or ./comparison)")
    parser.add_argument("--tta", action="store_true", help="also report accuracy with flip test-time augmentation")
    parser.add_argument("--export-app", type=Path, metavar="DIR",
                        help="write the web demo of --ckpt into DIR, a folder that runs without cifar_lit (the layout "
                             "of a Hugging Face Space: app.py, requirements.txt, weights, examples, README card)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per evaluation batch")
    parser.add_argument("--gradcam-layer", default=DEFAULT_LAYER,
                        help="layer of the Grad-CAM maps in the report (default: auto, the network's own choice: "
                             "layer3 on the ResNets; 'none' for no maps)")
    parser.add_argument("--gpus", type=non_negative_int, default=None,
                        help="0 for the CPU (default: a GPU when available)")
    return parser


def run_config(checkpoint: Path) -> dict[str, Any]:
    """The config.yaml of the checkpoint's run ({} when there is none); DataError naming it when it is damaged."""
    run_dir = run_dir_of(checkpoint)
    path = run_dir / "config.yaml" if run_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise DataError(f"The run's configuration {path} is damaged ({' '.join(str(error).split())[:160]}). Give the "
                        "data folder with --data-dir, or restore config.yaml.") from None
    if not isinstance(config, dict):
        raise DataError(f"The run's configuration {path} holds no mapping of options. Give the data folder with "
                        "--data-dir, or restore config.yaml.")
    return config


def recorded_data_dir(checkpoint: Path) -> Path | None:
    """The data folder the checkpoint's run recorded in its config.yaml; None when it recorded none."""
    named = run_config(checkpoint).get("data_dir")
    return None if named is None else Path(str(named)).expanduser()


def data_dir_of_run(checkpoint: Path) -> Path:
    """The data folder the checkpoint's run trained on, or ./data when it recorded none."""
    path = recorded_data_dir(checkpoint)
    if path is None:
        return Path("data")
    if not path.is_absolute() and not path.exists():
        raise DataError(f"The run's config.yaml names the data folder {str(path)!r}, relative to the folder train.py "
                        f"ran in, and there is no {path.absolute()}. Give the data folder with --data-dir.")
    return path


def report_folder(args: argparse.Namespace) -> Path:
    """--out, or <run>/report; refused when it names a file."""
    run_dir = run_dir_of(args.ckpt)
    return checked_folder(args.out or (run_dir / "report" if run_dir else Path(f"report-{args.ckpt.stem}")))


def checked_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; the output is a folder of files. Give a folder (new or "
                          "existing) to --out.")
    return out


# ---------------------------------------------------------------------------------------------------- report


def evaluation_split(model: TrainedModel, data_dir: Path) -> Split:
    """The test images of `data_dir`, opened the way the model's run read its data; refused when its classes are
    not the model's."""
    data = model.data_options
    dataset = open_dataset(data_dir, data.dataset, cifar100_labels=data.cifar100_labels,
                           verify_checksums=data.verify_checksums,
                           resize=data.resize, downloadable=False)
    if dataset.class_names != model.class_names:
        raise DataError(
            f"The data in {data_dir} has the classes {', '.join(dataset.class_names)}, and the checkpoint was trained "
            f"on {', '.join(model.class_names)}. Give --data-dir the data set the checkpoint was trained on."
        )
    return dataset.load("test")


def write_report(checkpoint: Path, data_dir: Path, *, out: Path, device: torch.device, batch_size: int,
                 tta: bool, gradcam_layer: str | None = DEFAULT_LAYER) -> dict[str, Any]:
    model = load_trained_model(checkpoint, device)
    gradcam_layer = resolve_layer(model.module.model, gradcam_layer)
    if gradcam_layer:
        network_layer(model.module.model, gradcam_layer)  # a layer without maps is refused before anything is written
    test = evaluation_split(model, data_dir)
    classes = model.class_names
    metrics, predictions = evaluate_images(model, test.images, test.labels, batch_size=batch_size, flip_tta=tta,
                                           device=device)
    metrics.update(checkpoint=str(checkpoint), data_dir=str(data_dir), dataset=NAMES.get(model.dataset, "image folder"),
                   device=device_description(device),
                   command=command_line(program="evaluate.py"), git_commit=git_commit(), versions=versions())
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    matrix = np.asarray(metrics["confusion_matrix"])
    per_class = [metrics["per_class_accuracy"][name] for name in classes]
    save_figure(confusion_matrix_figure(matrix, classes, f"Confusion matrix, {len(test)} test images"),
                out / "confusion_matrix.png")
    save_figure(per_class_accuracy_figure(per_class, classes, "Accuracy per class (test set)"),
                out / "per_class_accuracy.png")
    for kind, mask in (("misclassified", predictions != test.labels), ("correct", predictions == test.labels)):
        chosen = spread_over_classes(test.labels, mask, GRID_IMAGES, classes=len(classes))
        pictures, true, predicted = test.images[chosen] / 255.0, test.labels[chosen].tolist(), predictions[chosen]
        title = f"{kind.capitalize()} test images ({len(chosen)} shown, spread over classes)"
        save_figure(prediction_grid_figure(pictures, true, predicted.tolist(), class_names=classes, title=title),
                    out / f"{kind}.png")
        if gradcam_layer:
            inputs = model_inputs(model, test.images[chosen], device)
            cams = maps_for_predictions(model.module.model, inputs, torch.as_tensor(true),
                                        torch.as_tensor(predicted), layer=gradcam_layer)
            figure = gradcam_grid_figure(pictures, cams["maps_predicted"].numpy(), cams["maps_true"].numpy(),
                                         true_labels=true, predicted_labels=predicted.tolist(),
                                         confidences=cams["confidence"].tolist(), class_names=classes,
                                         title=f"Grad-CAM ({gradcam_layer}): {title}")
            save_figure(figure, out / f"gradcam_{kind}.png")
    write_model_summary(out, model.module.options.model, model.module.options.width, len(classes))
    run_dir = run_dir_of(checkpoint)
    curves = run_dir / "metrics.csv" if run_dir else None
    if curves is not None and curves.is_file():
        save_figure(accuracy_and_loss_figure(read_history_csv(curves), f"Training run {run_dir.name}"),
                    out / "curves.png")
    write_text_atomic(out / "report.md", report_markdown(metrics, out))
    return metrics


def report_markdown(metrics: dict[str, Any], out: Path) -> str:
    worst = sorted(metrics["per_class_accuracy"].items(), key=lambda item: item[1])[:3]
    lines = [
        f"# Evaluation report: {metrics['dataset']}, {len(metrics['per_class_accuracy'])} classes",
        "",
        f"Checkpoint: `{metrics['checkpoint']}`  ",
        f"Test data: `{metrics['data_dir']}` ({metrics['images']} images), evaluated on {metrics['device']}.",
        "",
        f"**Test accuracy: {metrics['accuracy']:.2%}** (cross-entropy {metrics['loss']:.4f})",
    ]
    if "accuracy_top5" in metrics:
        lines.append(f"Top-5 accuracy: {metrics['accuracy_top5']:.2%}")
    if "accuracy_flip_tta" in metrics:
        lines.append(f"With flip test-time augmentation: {metrics['accuracy_flip_tta']:.2%}")
    lines += [
        "",
        "Hardest classes: " + ", ".join(f"{name} {value:.1%}" for name, value in worst) + ".",
        "",
        "| class | accuracy |",
        "|---|---:|",
        *[f"| {name} | {value:.2%} |" for name, value in metrics["per_class_accuracy"].items()],
        "",
    ]
    if (out / "curves.png").is_file():
        lines += ["## Training curves", "", "![curves](curves.png)", ""]
    lines += [
        "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", "",
        "## Accuracy per class", "", "![per-class accuracy](per_class_accuracy.png)", "",
        "## Misclassified images", "", "![misclassified](misclassified.png)", "",
        "## Correctly classified images", "", "![correct](correct.png)", "",
    ]
    if (out / "gradcam_misclassified.png").is_file():
        lines += ["## Where the network looked (Grad-CAM)", "",
                  "The maps of the predicted class, and beside them those of the true class where the prediction is "
                  "wrong.", "", "![Grad-CAM, misclassified](gradcam_misclassified.png)", "",
                  "![Grad-CAM, correct](gradcam_correct.png)", ""]
    lines += ["## The network", "", "[model_summary.txt](model_summary.txt): layers, output shapes, parameters and "
              "mult-adds.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- compare


COMPARED_KEYS = ("test_acc", "best_val_acc", "target_epoch", "target_seconds", "epochs_run", "train_seconds")


def read_run(run_dir: Path) -> dict[str, Any]:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise DataError(f"{run_dir} has no summary.json: give run folders (lightning_logs/version_N) of finished "
                        "train.py runs to --compare.")
    try:
        summary = json.loads(summary_path.read_text())
        missing = [key for key in COMPARED_KEYS if key not in summary] if isinstance(summary, dict) else ["all"]
    except (ValueError, OSError) as error:
        raise DataError(f"{summary_path} is damaged ({error}); it cannot be compared. Resume the run to write it "
                        "again (python train.py --resume <its last.ckpt>), or leave it out of --compare.") from None
    if missing or not isinstance(summary.get("config"), dict):
        raise DataError(f"{summary_path} lacks {', '.join(missing) or 'config'}: it was not written by train.py of "
                        "this version. Leave it out of --compare, or resume the run to write it again.")
    history_path = run_dir / "metrics.csv"
    try:
        summary["history"] = read_history_csv(history_path) if history_path.is_file() else []
    except (ValueError, OSError, KeyError) as error:
        raise DataError(f"{history_path} is damaged ({error}); it cannot be plotted. Leave that run out of "
                        "--compare, or delete the file to compare without its curve.") from None
    return summary


def compare_runs(run_dirs: Sequence[Path], out: Path) -> str:
    runs = {str(run_dir): read_run(run_dir) for run_dir in run_dirs}
    configs = [run["config"] for run in runs.values()]
    differing = sorted(k for k in configs[0] if k not in {"config", "resume", "logdir"}
                       and len({json.dumps(c.get(k)) for c in configs}) > 1)

    def cell(value: Any, pattern: str = "{}") -> str:
        return "–" if value is None else pattern.format(value)

    header = ["run", "test acc", "best val acc", "target epoch", "s to target", "epochs", "train s", *differing]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        row = [name, cell(run["test_acc"], "{:.2%}"), cell(run["best_val_acc"], "{:.2%}"), cell(run["target_epoch"]),
               cell(run["target_seconds"], "{:.1f}"), cell(run["epochs_run"]), cell(run["train_seconds"], "{:.1f}"),
               *[cell(run["config"].get(key)) for key in differing]]
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "comparison.md", "# Runs compared\n\n" + table + "\n![val accuracy](comparison.png)\n")
    series = {Path(name).name if len(set(Path(n).name for n in runs)) == len(runs) else name:
              ([row["epoch"] for row in run["history"]], [row["val_acc"] for row in run["history"]])
              for name, run in runs.items()}
    save_figure(curves_figure(series, "validation accuracy", "Validation accuracy per epoch", percent=True),
                out / "comparison.png")
    return table


# ---------------------------------------------------------------------------------------------------- main


def evaluate(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.compare:
        out = checked_folder(args.out or Path("comparison"))
        print(compare_runs(args.compare, out), end="")
        print(f"Wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
        return 0
    device = single_device(args.gpus)
    checkpoint_file(args.ckpt, resuming=False)
    if args.export_app:
        return export_app(args, device)
    if args.images:
        return classify_images(args.ckpt, args.images, output=args.output, top_k=args.top_k, device=device)
    out = report_folder(args)
    data_dir = args.data_dir or data_dir_of_run(args.ckpt)
    layer = None if args.gradcam_layer in ("none", "") else args.gradcam_layer
    metrics = write_report(args.ckpt, data_dir, out=out, device=device, batch_size=args.batch_size, tta=args.tta,
                           gradcam_layer=layer)
    tta = f", {metrics['accuracy_flip_tta']:.2%} with flip TTA" if "accuracy_flip_tta" in metrics else ""
    top5 = f", top-5 {metrics['accuracy_top5']:.2%}" if "accuracy_top5" in metrics else ""
    print(f"Test accuracy {metrics['accuracy']:.2%}{top5} on {metrics['images']} images{tta}. Report: "
          f"{out / 'report.md'}")
    return 0


def classify_images(checkpoint: Path, given: list[Path], *, output: Path | None, top_k: int,
                    device: torch.device) -> int:
    """The top classes of every picture that can be read, through Lightning's predict loop: printed, or written to
    `output`; each picture that cannot be read is named (a row with its error in the file) and makes the exit 2."""
    if output is not None and output.suffix not in (".csv", ".json"):
        raise UserError(f"--output {output} must end in .csv or .json: the file's format follows its name.")
    if output is not None and output.is_dir():
        raise UserError(f"--output {output} is a folder. Give the path of a .csv or .json file to write.")
    paths = picture_paths(given)
    if not paths:
        raise DataError(f"No pictures in {', '.join(map(str, given))}. Give image files or folders holding them.")
    model = load_trained_model(checkpoint, device)
    # A progress bar while the rows go to a file; printed rows stand alone.
    predictions = predict(model, paths, top_k=top_k, accelerator=device.type if device.type != "cuda" else "gpu",
                          progress_bar=output is not None)
    if output is not None:
        write_predictions(predictions, output, min(top_k, len(model.class_names)))
        print(f"Wrote the top {min(top_k, len(model.class_names))} classes of {len(predictions)} picture(s) to "
              f"{output}.")
    else:
        for prediction in predictions:
            if not prediction.error:
                print(f"{prediction.path}: " + ", ".join(f"{name} {p:.1%}" for name, p in prediction.top))
    for prediction in predictions:
        if prediction.error:
            print(f"error: {prediction.error}", file=sys.stderr)
    return 2 if any(prediction.error for prediction in predictions) else 0


def export_app(args: argparse.Namespace, device: torch.device) -> int:
    out = checked_folder(args.export_app)
    model = load_trained_model(args.ckpt, device)
    data_dir = args.data_dir or data_dir_of_run(args.ckpt)
    test = evaluation_split(model, data_dir) if data_dir.exists() else None
    write_app_folder(out, args.ckpt, test, device=device, model=model)
    gallery = "" if test is not None else f" (no examples or gallery: {data_dir} is not there; give --data-dir)"
    print(f"Wrote the web demo to {out}{gallery}. Run it with: cd {shlex.quote(str(out))} && python app.py")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return evaluate(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
