"""Class activation maps (Grad-CAM, Selvaraju et al. 2017) of the network's predictions, with captum's LayerGradCam.

Where the network looked: the gradient of a class's logit, averaged over each channel of a layer's output, weights
that layer's activation maps; the ReLU of the sum, upsampled to the image, is the map. The default layer ("auto")
is the network's own choice, its `gradcam_layer` attribute (`layer3` on the ResNets: 8x8 maps; `layer4`'s are 4x4,
too coarse to read on a 32x32 image), else its last block with spatial output.

What running it inside a training run needs (each tested): fp32 even in a bf16 or fp16 run (autocast off; the
inputs cast up); gradients even under Lightning's no-grad validation (`torch.enable_grad()`, inputs that are not
inference tensors); the eager network, since hooks on a module torch.compile has compiled are silently ignored (the
project compiles its step functions, never `module.model`, so nothing is recompiled); and the network's train/eval
mode and every parameter's `.grad` left as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from cifar_lit.reliability.errors import ConfigError

DEFAULT_LAYER = "auto"  # the network's own choice (`default_layer`)


def output_dims(network: nn.Module, layers: list[nn.Module]) -> list[int]:
    """How many dimensions each of `layers` outputs, from one forward pass of a blank 32x32 image (eval mode and no
    grad: nothing of the network changes)."""
    dims: dict[int, int] = {}

    def note(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:  # returns None: the output stays as it is
            dims.setdefault(index, out.dim() if isinstance(out, torch.Tensor) else 0)
        return hook

    hooks = [layer.register_forward_hook(note(index)) for index, layer in enumerate(layers)]
    parameter = next(network.parameters())
    try:
        with untouched(network), torch.no_grad():
            network(torch.zeros(1, 3, 32, 32, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return [dims.get(index, 0) for index in range(len(layers))]


def spatial_children(network: nn.Module) -> list[str]:
    """The network's top-level blocks whose output has maps (N, C, H, W), in their order."""
    children = dict(network.named_children())
    return [name for name, dims in zip(children, output_dims(network, list(children.values())), strict=True)
            if dims == 4]


def default_layer(network: nn.Module) -> str:
    """The network's `gradcam_layer` attribute when it names one, else its last block with spatial output."""
    named = getattr(network, "gradcam_layer", None)
    if named:
        return named
    spatial = spatial_children(network)
    if not spatial:
        raise ConfigError("The network has no block with spatial output for Grad-CAM. Give --gradcam-layer the name "
                          "of a layer inside it that outputs maps, or --gradcam-layer none.")
    return spatial[-1]


def resolve_layer(network: nn.Module, name: str | None) -> str | None:
    """`name` as the layer to draw: "auto" is the network's own (`default_layer`); None or "none" is no maps."""
    if not name or name == "none":
        return None
    return default_layer(network) if name == DEFAULT_LAYER else name


def network_layer(network: nn.Module, name: str) -> nn.Module:
    """The submodule `name` ("layer3", "layer3.1", "layer4.0.conv2"...) when it outputs maps (N, C, H, W) that
    Grad-CAM can weigh; a ConfigError listing the layers that do, otherwise."""
    name = resolve_layer(network, name) or name
    children = dict(network.named_children())
    try:
        layer = network.get_submodule(name)
    except AttributeError:
        layer = None
    *child_dims, layer_dims = output_dims(network, [*children.values(), layer or network])
    spatial = [child for child, dims in zip(children, child_dims, strict=True) if dims == 4]
    choices = f"choose one of {', '.join(spatial)} or a block inside one (e.g. layer3.1)"
    if layer is None:
        raise ConfigError(f"--gradcam-layer {name!r} is not a layer of the network; {choices}.")
    if layer_dims != 4:
        raise ConfigError(f"--gradcam-layer {name!r} has no spatial maps to weigh (Grad-CAM needs a layer whose "
                          f"output is channels x height x width); {choices}.")
    return layer


@contextmanager
def untouched(network: nn.Module) -> Iterator[None]:
    """Eval mode inside; the network's mode and its parameters' gradients as they were afterwards."""
    was_training = network.training
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in network.named_parameters()}
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)
        for name, parameter in network.named_parameters():
            parameter.grad = grads[name]


def class_activation_maps(network: nn.Module, images: torch.Tensor, classes: torch.Tensor,
                          layer: str = DEFAULT_LAYER) -> torch.Tensor:
    """(N, H, W) maps in [0, 1] of where `network` found evidence for `classes` (one per image) in `images`
    (normalized NCHW, any dtype); each map is scaled by its own maximum (an all-zero map stays zero)."""
    if len(images) == 0:
        return images.new_zeros((0, *images.shape[-2:]), dtype=torch.float32)
    device_type = images.device.type
    with untouched(network), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        inputs = images.detach().float().clone()  # a fresh tensor: never an inference tensor, never bf16
        cam = LayerGradCam(network, network.get_submodule(resolve_layer(network, layer)))  # checked at start-up
        maps = cam.attribute(inputs, target=classes.to(images.device).long(), relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp(min=0.0)
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return (maps / peak).float()


def maps_for_predictions(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                         *, layer: str = DEFAULT_LAYER) -> dict[str, torch.Tensor]:
    """What a Grad-CAM grid shows for a batch whose predictions are known (those the evaluation counted): the
    probability of each predicted class, and the maps for the predicted and for the true class, all on the host."""
    predicted = predicted.to(images.device).long()
    with torch.no_grad(), untouched(network), torch.autocast(images.device.type, enabled=False):
        probabilities = network(images.detach().float()).softmax(dim=1)
    confidence = probabilities.gather(1, predicted[:, None])[:, 0]
    return {
        "confidence": confidence.cpu(),
        "maps_predicted": class_activation_maps(network, images, predicted, layer).cpu(),
        "maps_true": class_activation_maps(network, images, labels, layer).cpu(),
    }
