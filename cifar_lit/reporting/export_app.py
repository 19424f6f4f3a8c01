"""A trained checkpoint as the files the web demo runs on (cifar_lit/app/demo.py's `Bundle`), and as a folder that
runs on its own, laid out as a Hugging Face Space expects (`evaluate.py --export-app DIR`).

The bundle: model.pt (the network's weights only, a plain state dict that `torch.load(weights_only=True)` reads),
bundle.json (width, class names, normalization, what the page says of the model, the example and gallery files),
examples/ (one test image per class, ten at most) and gallery/ (misclassified test images, spread over the
classes). The checkpoint is read by the project's safe loader: weights only, checked to be this project's network.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import version
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cifar_lit.data.sources import NAMES
from cifar_lit.reliability.checkpoints import run_dir_of
from cifar_lit.reliability.files import write_bytes_atomic, write_text_atomic
from cifar_lit.reporting.gradcam import default_layer
from cifar_lit.reporting.inference import TrainedModel, evaluate_images, load_trained_model
from cifar_lit.reporting.plots import spread_over_classes

PACKAGE = Path(__file__).resolve().parents[1]
DEMO_FILES = {"demo.py": PACKAGE / "app" / "demo.py", "resnet.py": PACKAGE / "models" / "resnet.py",
              "pixels.py": PACKAGE / "data" / "pixels.py"}
EXAMPLES, GALLERY = 10, 24
ENLARGE = 4  # gallery and example images are 32x32: stored enlarged (nearest neighbour) so a browser shows pixels
APP_PY = '''"""Entry point of the exported demo (a Hugging Face Space runs `python app.py`): host and port come from
Gradio's own environment variables, GRADIO_SERVER_NAME and GRADIO_SERVER_PORT, which Spaces sets."""

from pathlib import Path

from demo import Bundle, build_demo, launch

demo = build_demo(Bundle.load(Path(__file__).resolve().parent))

if __name__ == "__main__":
    launch(demo)
'''


def run_summary(checkpoint: Path) -> dict[str, Any]:
    """The summary.json of the checkpoint's run, or {} (a checkpoint out of its run folder, a run never tested)."""
    run_dir = run_dir_of(checkpoint)
    try:
        summary = json.loads((run_dir / "summary.json").read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def save_picture(path: Path, image: np.ndarray) -> str:
    picture = Image.fromarray(image).resize((image.shape[1] * ENLARGE, image.shape[0] * ENLARGE),
                                            Image.Resampling.NEAREST)
    buffer = BytesIO()
    picture.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return str(path)


def write_bundle(folder: Path, checkpoint: Path, test: Any | None, *, device: torch.device | str = "cpu",
                 model: TrainedModel | None = None) -> Path:
    """The bundle of `checkpoint` in `folder`; examples and gallery from `test` (a Split of its data set) if given."""
    folder = Path(folder)
    model = model or load_trained_model(checkpoint, device)
    names = list(model.class_names)
    weights = {key[len("model."):]: value.detach().cpu() for key, value in model.module.state_dict().items()
               if key.startswith("model.")}
    buffer = BytesIO()
    torch.save(weights, buffer)
    write_bytes_atomic(folder / "model.pt", buffer.getvalue())
    summary = run_summary(checkpoint)
    recipe = model.module.options
    info = {"title": f"CIFAR {recipe.model} (width {recipe.width})",
            "dataset": NAMES.get(model.dataset or "", "image folder"),
            "test_acc": summary.get("test_acc"), "command": summary.get("command"), "checkpoint": Path(checkpoint).name}
    examples, gallery = [], []
    if test is not None and len(test):
        for label in range(min(EXAMPLES, len(names))):
            found = np.flatnonzero(test.labels == label)
            if len(found):
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in names[label])
                examples.append(save_picture(folder / "examples" / f"{safe}.png", test.images[found[0]]))
        _, predictions = evaluate_images(model, test.images, test.labels, device=device)
        wrong = predictions != test.labels
        for index in spread_over_classes(test.labels, wrong, GALLERY, classes=len(names)):
            caption = f"true: {names[test.labels[index]]} / pred: {names[predictions[index]]}"
            gallery.append((save_picture(folder / "gallery" / f"{index:06d}.png", test.images[index]), caption))
        info["test_acc"] = info["test_acc"] if info["test_acc"] is not None else float(1 - wrong.mean())
    meta = {"model": recipe.model, "width": recipe.width, "class_names": names, "mean": list(model.mean),
            "std": list(model.std), "info": info, "gradcam_layer": default_layer(model.module.model),
            "examples": [str(Path(path).relative_to(folder)) for path in examples],
            "gallery": [[str(Path(path).relative_to(folder)), caption] for path, caption in gallery]}
    write_text_atomic(folder / "bundle.json", json.dumps(meta, indent=2) + "\n")
    return folder


def copy_network_module(name: str, out: Path) -> None:
    """A network of one's own (`module:callable`) goes with the demo: its module beside resnet.py, which imports it
    from the folder the app runs in. Built-in networks live in resnet.py itself."""
    if ":" not in name:
        return
    module = sys.modules[name.partition(":")[0]]  # imported when the checkpoint's network was built
    source = Path(module.__file__)
    if source.name == "__init__.py":  # a package: the whole folder
        shutil.copytree(source.parent, out / source.parent.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(source, out / source.name)


def requirements() -> str:
    # The installed versions from their metadata: importing Gradio only to read its version costs seconds.
    return "\n".join(["torch", "numpy", "pillow<13", f"gradio=={version('gradio')}", f"captum=={version('captum')}",
                      ""])


def space_card(meta: dict[str, Any]) -> str:
    info = meta["info"]
    accuracy = f"{info['test_acc']:.2%}" if info.get("test_acc") is not None else "not measured"
    trained = f"`{info['command']}`" if info.get("command") else "cifar_lit's train.py"
    return "\n".join([
        "---", f"title: {info['title']}", "sdk: gradio", f"sdk_version: {version('gradio')}", "app_file: app.py",
        "pinned: false", "---", "", f"# {info['title']}", "",
        f"A CIFAR {meta.get('model', 'resnet18')} trained on {info.get('dataset')} with cifar_lit "
        f"({len(meta['class_names'])} classes: {', '.join(meta['class_names'][:10])}"
        f"{', ...' if len(meta['class_names']) > 10 else ''}).", "",
        f"- Test accuracy: **{accuracy}**", f"- Trained with: {trained}", "",
        "Drop images on the page: it shows the top classes with their probabilities and a Grad-CAM map of where "
        "the network looked, and a gallery of test images it gets wrong.", "",
        "Run it locally: `pip install -r requirements.txt && python app.py` (then open http://127.0.0.1:7860).", "",
    ])


def write_app_folder(out: Path, checkpoint: Path, test: Any | None, *, device: torch.device | str = "cpu",
                     model: TrainedModel | None = None) -> Path:
    """A folder that runs the demo without cifar_lit: app.py, demo.py, resnet.py, pixels.py, requirements.txt,
    README.md, and the bundle."""
    out = Path(out)
    model = model or load_trained_model(checkpoint, device)
    write_bundle(out, checkpoint, test, device=device, model=model)
    for name, source in DEMO_FILES.items():
        shutil.copyfile(source, out / name)
    copy_network_module(model.module.options.model, out)
    write_text_atomic(out / "app.py", APP_PY)
    write_text_atomic(out / "requirements.txt", requirements())
    meta = json.loads((out / "bundle.json").read_text())
    write_text_atomic(out / "README.md", space_card(meta))
    return out
