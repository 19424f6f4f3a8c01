"""The web demo of a trained network: a Gradio page that classifies the images you drop, shows the top classes and
where the network looked (Grad-CAM), the test set's misclassified images, and how the model was trained.

This file runs on its own: `evaluate.py --export-app DIR` copies it, with the network's definition (resnet.py), into
a folder that needs neither the training code nor the cifar_lit package (a Hugging Face Space, say). It depends on
torch, numpy, Pillow, gradio and captum only, and takes everything else from a `Bundle`: the weights, the class
names, the normalization and what the page says about the model.

Offline it makes no request beyond 127.0.0.1: Gradio's analytics and the Hub are switched off before Gradio is
first imported (`build_demo`; importing this file changes nothing), and the theme uses the system's fonts instead
of Google's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

try:  # inside the package
    from cifar_lit.data.pixels import read_picture
    from cifar_lit.models.resnet import DEFAULT_MODEL, build_model
except ImportError:  # in an exported folder, beside pixels.py and resnet.py
    from pixels import read_picture  # type: ignore[no-redef]
    from resnet import DEFAULT_MODEL, build_model  # type: ignore[no-redef]

if TYPE_CHECKING:
    import gradio as gr

SIZE = 32
THEME_FONTS = {"font": ["system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "GRADIO_SERVER_NAME": "127.0.0.1"}  # defaults only: a Space sets its own server name


def gradio() -> Any:
    """Gradio, imported with its analytics and the Hub off (they are read when it is first imported)."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    import gradio

    return gradio


@dataclass(kw_only=True)
class Bundle:
    """What the page needs of a trained model."""

    weights: dict[str, torch.Tensor]  # the network's state dict (no "model." prefix)
    model: str  # the network's registered name (resnet18, resnet34, resnet9)
    width: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    info: dict[str, Any] = field(default_factory=dict)  # accuracy, command, data set... shown on the page
    examples: list[str] = field(default_factory=list)  # image files to click
    gallery: list[tuple[str, str]] = field(default_factory=list)  # (image file, caption) of misclassified images
    gradcam_layer: str | None = None  # the network's own choice (layer3 on the ResNets); None: its last stage

    @staticmethod
    def load(folder: Path) -> Bundle:
        """An exported folder: bundle.json, model.pt (a weights-only state dict), examples/ and gallery/."""
        folder = Path(folder)
        meta = json.loads((folder / "bundle.json").read_text())
        weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        return Bundle(weights=weights, model=meta.get("model", DEFAULT_MODEL), width=meta["width"],
                      class_names=meta["class_names"], mean=meta["mean"], std=meta["std"], info=meta.get("info", {}),
                      examples=[str(folder / path) for path in meta.get("examples", [])],
                      gallery=[(str(folder / path), caption) for path, caption in meta.get("gallery", [])],
                      gradcam_layer=meta.get("gradcam_layer"))


def read_image(path: str | Path) -> np.ndarray:
    """Any picture as 32x32 RGB uint8, converted as the training data and evaluate.py --images convert it
    (`pixels.read_picture`). ValueError with a readable reason when it is not an image."""
    try:
        return read_picture(path, SIZE)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for files that are not images
        raise ValueError(f"{Path(path).name} is not an image that can be read ({type(error).__name__})") from None


def spatial_blocks(network: torch.nn.Module) -> list[str]:
    """The network's top-level blocks that output maps (N, C, H, W): the layers Grad-CAM can look at."""
    shapes: dict[str, int] = {}

    def note(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:  # None: the output stays as it is
            shapes.setdefault(name, out.dim())
        return hook

    hooks = [child.register_forward_hook(note(name)) for name, child in network.named_children()]
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name, _ in network.named_children() if shapes.get(name) == 4]


class Classifier:
    """The network in eval mode on `device`, with its normalization; top-k and Grad-CAM for uint8 images."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.network = build_model(bundle.model, len(bundle.class_names), bundle.width)
        self.network.load_state_dict(bundle.weights)
        self.layers = spatial_blocks(self.network.eval())  # on the CPU, in eval mode: nothing of it changes
        self.network.to(self.device)
        self.default_layer = bundle.gradcam_layer if bundle.gradcam_layer in self.layers else self.layers[-1]
        self.mean = torch.tensor(bundle.mean, device=self.device)[None, :, None, None]
        self.std = torch.tensor(bundle.std, device=self.device)[None, :, None, None]

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (batch - self.mean) / self.std

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.network(self.inputs(images)).softmax(dim=1).cpu().numpy()

    def maps(self, images: np.ndarray, classes: list[int], layer: str) -> np.ndarray:
        """(N, 32, 32) Grad-CAM maps in [0, 1] for `classes`, in fp32 with gradients (the page runs no training)."""
        if layer not in self.layers:
            raise ValueError(f"unknown layer {layer!r}; one of {', '.join(self.layers)}")
        with torch.enable_grad():
            inputs = self.inputs(images).clone()
            cam = LayerGradCam(self.network, self.network.get_submodule(layer))
            attributions = cam.attribute(inputs, target=torch.tensor(classes, device=self.device),
                                         relu_attributions=True)
            maps = LayerAttribution.interpolate(attributions.detach(), (SIZE, SIZE), interpolate_mode="bilinear")
        maps = maps[:, 0].clamp(min=0)
        return (maps / maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]).cpu().numpy()


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float, scale: int = 5) -> Image.Image:
    """The image enlarged without smoothing, the map laid over it in an 'inferno'-like ramp."""
    ramp = np.stack([np.clip(1.5 * heat, 0, 1), np.clip(1.5 * heat - 0.5, 0, 1), np.clip(0.6 - heat, 0, 1) * 0.6],
                    axis=-1)
    blended = (1 - opacity) * (image / 255.0) + opacity * ramp
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    return picture.resize((SIZE * scale, SIZE * scale), Image.Resampling.NEAREST)


def classify(classifier: Classifier, files: list[Any] | None, *, k: int, opacity: float, layer: str
             ) -> tuple[dict[str, float], list[tuple[Image.Image, str]], str, str]:
    """(top-k of the first image, overlays with captions, a table of every image's top-k, a status message)."""
    names = classifier.bundle.class_names
    paths = [getattr(item, "name", item) for item in (files or [])]
    images, kept, problems = [], [], []
    for path in paths:
        try:
            images.append(read_image(path))
            kept.append(Path(str(path)).name)
        except ValueError as problem:
            problems.append(str(problem))
    if not images:
        message = "; ".join(problems) if problems else "Drop or pick one or more images."
        return {}, [], "", f"**{message}**" if problems else message
    batch = np.stack(images)
    probabilities = classifier.probabilities(batch)
    k = max(1, min(int(k), len(names)))
    predicted = probabilities.argmax(axis=1).tolist()
    maps = classifier.maps(batch, predicted, layer)
    gallery = [(overlay(image, heat, opacity), f"{name}: {names[p]} {probs[p]:.0%}")
               for image, heat, name, p, probs in zip(images, maps, kept, predicted, probabilities, strict=True)]
    rows = ["| image | " + " | ".join(f"top {i + 1}" for i in range(k)) + " |", "|---|" + "---|" * k]
    for name, probs in zip(kept, probabilities, strict=True):
        order = np.argsort(-probs)[:k]
        rows.append(f"| {name} | " + " | ".join(f"{names[i]} {probs[i]:.1%}" for i in order) + " |")
    first = {names[i]: float(probabilities[0][i]) for i in np.argsort(-probabilities[0])[:k]}
    status = f"Classified {len(images)} image(s)." + (f" Skipped: {'; '.join(problems)}." if problems else "")
    return first, gallery, "\n".join(rows), status


def model_card(bundle: Bundle) -> str:
    info = bundle.info
    lines = [f"**{info.get('title', f'CIFAR {bundle.model}')}**: {len(bundle.class_names)} classes "
             f"({', '.join(bundle.class_names[:12])}{', ...' if len(bundle.class_names) > 12 else ''})."]
    if info.get("test_acc") is not None:
        lines.append(f"Test accuracy **{info['test_acc']:.2%}** on {info.get('dataset', 'its test set')}.")
    if info.get("command"):
        lines.append(f"Trained with: `{info['command']}`")
    return "  \n".join(lines)


def build_demo(bundle: Bundle, device: str | torch.device = "cpu") -> gr.Blocks:
    gr = gradio()
    classifier = Classifier(bundle, device)
    with gr.Blocks(title=f"CIFAR {bundle.model}") as demo:
        gr.Markdown("# What does the network see?")
        gr.Markdown(model_card(bundle), elem_id="model-card")
        with gr.Row():
            with gr.Column():
                files = gr.File(file_count="multiple", file_types=["image"], label="Images (any size)",
                                elem_id="images")
                k = gr.Slider(1, len(bundle.class_names), value=min(3, len(bundle.class_names)), step=1,
                              label="classes to show")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Grad-CAM opacity")
                layer = gr.Dropdown(classifier.layers, value=classifier.default_layer, label="Grad-CAM layer")
                run = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                top = gr.Label(label="top classes (first image)", elem_id="top")
                overlays = gr.Gallery(label="where the network looked (predicted class)", columns=4, height="auto",
                                      object_fit="contain", allow_preview=False)
                table = gr.Markdown(elem_id="table")
        run.click(lambda chosen, top_k, alpha, at: classify(classifier, chosen, k=top_k, opacity=alpha, layer=at),
                  [files, k, opacity, layer], [top, overlays, table, status],
                  api_name="classify")
        if bundle.examples:
            gr.Examples([[[path]] for path in bundle.examples], inputs=[files], label="examples: click one")
        if bundle.gallery:
            gr.Markdown("## Misclassified test images")
            gr.Gallery(bundle.gallery, columns=8, height=260, label="true / predicted")
    return demo


def launch(demo: gr.Blocks, **options: Any) -> None:
    """`demo.launch` with the system-font theme (no request to Google's font servers)."""
    demo.launch(theme=gradio().themes.Base(**THEME_FONTS), **options)
