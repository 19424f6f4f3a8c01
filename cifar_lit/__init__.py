"""cifar_lit: train the CIFAR ResNet18 on CIFAR-10 with PyTorch Lightning and stop at a target accuracy.

`cifar_lit.fit(options or argv) -> RunResult` trains as `python train.py` does; `cifar_lit.Options` builds typed
options (`Options.of(max_epochs=2, width=16)`). Both load on first use, so importing a part of the package (the
network alone, for the exported demo) does not import Lightning.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Options", "RunResult", "fit"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "RunResult"):
        from cifar_lit.run import train

        return getattr(train, name)
    if name == "Options":
        from cifar_lit.run.options import Options

        return Options
    raise AttributeError(f"module 'cifar_lit' has no attribute {name!r}")
