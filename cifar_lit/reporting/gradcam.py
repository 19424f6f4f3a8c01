"""Class activation maps (Grad-CAM, Selvaraju et al. 2017) of the network's predictions, with captum's LayerGradCam.

Where the network looked: the gradient of a class's logit, averaged over each channel of a layer's output, weights
that layer's activation maps; the ReLU of the sum, upsampled to the image, is the map. The default layer is
`layer3` (its last block: 8x8 maps; `layer4`'s are 4x4, too coarse to read on a 32x32 image).

What running it inside a training run needs (each tested): fp32 even in a bf16 or fp16 run (autocast off; the
inputs cast up); gradients even under Lightning's no-grad validation (`torch.enable_grad()`, inputs that are not
inference tensors); the eager network, since hooks on a module torch.compile has compiled are silently ignored (the
project compiles its step functions, never `module.model`, so nothing is recompiled); and the network's train/eval
mode and every parameter's `.grad` left as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from cifar_lit.reliability.errors import ConfigError

DEFAULT_LAYER = "layer3"


def network_layer(network: nn.Module, name: str) -> nn.Module:
    """The submodule `name` ("layer3", "layer3.1", "layer4.0.conv2"...), or a ConfigError listing the choices."""
    try:
        return network.get_submodule(name)
    except AttributeError:
        choices = [child for child, _ in network.named_children()]
        raise ConfigError(f"--gradcam-layer {name!r} is not a layer of the network; choose one of "
                          f"{', '.join(choices)} or a block inside one (e.g. layer3.1).") from None


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
        cam = LayerGradCam(network, network_layer(network, layer))
        maps = cam.attribute(inputs, target=classes.to(images.device).long(), relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp(min=0.0)
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    return (maps / peak).float()


def maps_for_predictions(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                         layer: str = DEFAULT_LAYER) -> dict[str, torch.Tensor]:
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
