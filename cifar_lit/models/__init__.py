"""Networks trained by cifar_lit, by name (`MODELS`, `build_model`)."""

from cifar_lit.models.resnet import (
    BASE_WIDTH,
    DEFAULT_MODEL,
    MODELS,
    CifarResNet,
    ResidualBlock,
    ResNet9,
    build_model,
    model_factory,
    register_model,
    resnet9,
    resnet18,
    resnet34,
)

__all__ = ["BASE_WIDTH", "DEFAULT_MODEL", "MODELS", "CifarResNet", "ResNet9", "ResidualBlock", "build_model",
           "model_factory", "register_model", "resnet9", "resnet18", "resnet34"]
