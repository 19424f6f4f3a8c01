"""evaluate.py --images: the top classes of one's own pictures, through Lightning's predict loop (batches, a
progress bar), printed or written to a CSV or JSON file.

A picture that cannot be read is a row with its error; the others are classified and written all the same.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cifar_lit.data.image_folder import walk_class_folder
from cifar_lit.reliability.errors import DataError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reporting.inference import TrainedModel, model_inputs, read_user_image

BATCH = 256  # pictures per predict step


@dataclass(frozen=True)
class Prediction:
    """One picture: its path, its top classes with their probabilities (most probable first), or why it could not
    be read."""

    path: str
    top: list[tuple[str, float]]
    error: str | None = None


def picture_paths(given: list[Path]) -> list[Path]:
    """The files given, and every picture in a folder given (its subfolders too, sorted; hidden files and files
    that are not pictures by their suffix are left out)."""
    paths: list[Path] = []
    for path in given:
        if Path(path).is_dir():
            entries, _, _ = walk_class_folder(Path(path))
            paths += sorted(Path(entry.path) for entry in entries)
        else:
            paths.append(Path(path))
    return paths


class Pictures(Dataset):
    """Each picture as the network's normalized input (CHW float), with its index and the error that kept it from
    being read ("" when it was)."""

    def __init__(self, paths: list[Path], model: TrainedModel) -> None:
        self.paths, self.model = paths, model

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            pixels, error = read_user_image(self.paths[index]), ""
        except DataError as problem:
            pixels, error = np.zeros((32, 32, 3), dtype=np.uint8), str(problem)
        return model_inputs(self.model, pixels[None], "cpu")[0], index, error


def predict(model: TrainedModel, paths: list[Path], *, top_k: int, accelerator: str,
            progress_bar: bool = True) -> list[Prediction]:
    """Every picture's `top_k` classes, by the module's `predict_step` in Lightning's predict loop."""
    loader = DataLoader(Pictures(paths, model), batch_size=BATCH, shuffle=False)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=progress_bar)
    batches = trainer.predict(model.module, dataloaders=loader) or []
    predictions = []
    names, k = model.class_names, min(top_k, len(model.class_names))
    for probabilities, indices, errors in batches:
        for row, index, error in zip(probabilities.float().cpu().numpy(), indices.tolist(), errors, strict=True):
            order = np.argsort(-row)[:k]
            top = [] if error else [(names[i], float(row[i])) for i in order]
            predictions.append(Prediction(str(paths[index]), top, error or None))
    return predictions


def as_csv(predictions: list[Prediction], top_k: int) -> str:
    """One row per picture: path, class_1, probability_1, ..., class_k, probability_k, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", *(f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "probability")),
                     "error"])
    for prediction in predictions:
        cells = [value for name, probability in prediction.top for value in (name, f"{probability:.6f}")]
        writer.writerow([prediction.path, *cells, *[""] * (2 * top_k - len(cells)), prediction.error or ""])
    return buffer.getvalue()


def as_json(predictions: list[Prediction]) -> str:
    rows = [{"path": p.path, "top": [{"class": name, "probability": probability} for name, probability in p.top],
             "error": p.error} for p in predictions]
    return json.dumps(rows, indent=1) + "\n"


def write_predictions(predictions: list[Prediction], output: Path, top_k: int) -> None:
    """`output` as CSV (.csv) or JSON (.json), written whole or not at all."""
    write_text_atomic(output, as_json(predictions) if output.suffix == ".json" else as_csv(predictions, top_k))
