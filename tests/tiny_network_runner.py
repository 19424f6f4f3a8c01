"""train.py with one more network registered, `tiny` (one convolution block): a test that must compile for real
(Inductor's C++ code on the CPU) compiles its few small graphs instead of the ResNet's, in seconds.

    python tests/tiny_network_runner.py <train.py flags> --model tiny --gradcam-layer 0
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cifar_lit.models import register_model  # noqa: E402


@register_model
def tiny(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A 3x3 convolution, batch norm and ReLU (block `0`, for Grad-CAM), pooled into a linear classifier."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


if __name__ == "__main__":
    from cifar_lit.run.train import main  # after the registration: --model accepts the registered names

    sys.exit(main())
