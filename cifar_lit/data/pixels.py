"""Any picture as the 8-bit RGB the network takes: one conversion for the training data, `evaluate.py --images`,
the web demo and its exported folder.

This file is copied into the exported demo, so it imports only numpy and Pillow.

- Transparent pixels are composited onto white (BACKGROUND). Dropping the alpha channel instead would show the
  network whatever colour the file happens to store under them, which the user never sees.
- 16-bit images are scaled by their type's range (65535 -> 255), never by the image's own maximum, so a dim
  picture stays dim wherever it is read.
- Any size is centre-cropped to a square and resized with antialiasing (what `--resize` does to a data set).
- Every format Pillow can open is a picture, whatever the case of its file name's suffix.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
BACKGROUND = (255, 255, 255)  # under transparent pixels: white, as a viewer or a web page shows them
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@lru_cache(maxsize=1)
def picture_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of the formats Pillow can open here (.png, .jpg, .webp, .bmp, .tif, .gif...)."""
    Image.init()
    return frozenset(suffix for suffix, name in Image.registered_extensions().items() if name in Image.OPEN)


def is_picture_name(name: str) -> bool:
    """A visible file whose suffix, in any case, is one Pillow opens (macOS's `._name` forks are hidden files)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in picture_suffixes()


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB, and the mode it came in when that was another."""
    if image.mode == "RGB" and not has_transparency(image):
        return image, None
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.uint32)
        high = 65535 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255
        gray = (values.astype(np.float64) * (255.0 / high)).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), mode
    if has_transparency(image):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB"), mode
    return image.convert("RGB"), mode


def square_resize(image: Image.Image, size: int = SIZE) -> Image.Image:
    """Centre-crop to a square, then resize with antialiasing."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def picture_array(image: Image.Image, size: int = SIZE) -> tuple[np.ndarray, str | None]:
    """An opened picture as a (size, size, 3) uint8 array, with the mode it was converted from (None for RGB)."""
    image.load()
    rgb, converted = to_rgb(image)
    if rgb.size != (size, size):
        rgb = square_resize(rgb, size)
    return np.asarray(rgb, dtype=np.uint8), converted


def read_picture(path: str | Path, size: int = SIZE) -> np.ndarray:
    """A picture file as a (size, size, 3) uint8 array; Pillow's own exception when it is not one."""
    with Image.open(path) as image:
        return picture_array(image, size)[0]
