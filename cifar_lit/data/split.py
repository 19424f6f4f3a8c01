"""The shape every data source ends up in: one split as uint8 NHWC images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    """One split of the data set, held as uint8 NHWC images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)
