"""Seconds to decode an image folder into the uint8 cache (first run) and to load it back (every later run).

    python benchmarks/cache_timing.py --data-dir DIR

Uses a fresh temporary cache folder, so the first pass really decodes.
Writes benchmarks/results/cache-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cifar_lit.data.image_folder import load_image_folder_split
from cifar_lit.data.split import SPLITS
from cifar_lit.reporting.provenance import (
    PROJECT_ROOT,
    command_line,
    device_description,
    git_commit,
    versions,
    write_record,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    timings = {}
    with tempfile.TemporaryDirectory() as cache:
        for attempt in ("decode", "cached"):
            for split in SPLITS:
                start = time.perf_counter()
                loaded = load_image_folder_split(Path(args.data_dir), split, Path(cache))
                timings[f"{attempt}_{split}_seconds"] = time.perf_counter() - start
                timings[f"{split}_images"] = len(loaded)
    record = {"benchmark": "image-folder cache", "device": device_description(), "cpu_count": os.cpu_count(),
              "data": args.data_dir, **timings, "command": command_line(program="benchmarks/cache_timing.py"),
              "git_commit": git_commit(), "versions": versions(), "date": dt.date.today().isoformat()}
    path = write_record(args.out, "cache", record)
    print(json.dumps(timings, indent=2), f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
