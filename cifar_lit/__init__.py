"""cifar_lit: train the CIFAR ResNet18 on CIFAR-10 with PyTorch Lightning and stop at a target accuracy."""

__version__ = "0.1.0"
