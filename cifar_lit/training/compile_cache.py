"""Where torch.compile keeps its work between runs, and whether a run found it there (warm) or not (cold).

Inductor's compiled graphs, AOTAutograd's joint graphs and Triton's kernels are cached on disk. Kept in one folder
(`--compile-cache`, default ~/.cache/cifar_lit/compile), a second run on the same machine skips the compilers and
its warm-up shrinks to tracing; deleting the folder makes the next run compile from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# environment variable -> subfolder. Set for the run whatever they held: importing pytorch_lightning already sets
# TORCHINDUCTOR_CACHE_DIR to Inductor's default (/tmp/torchinductor_<user>), so a value there says nothing.
CACHE_VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
COUNTERS = {"hits": (("inductor", "fxgraph_cache_hit"), ("aot_autograd", "autograd_cache_hit")),
            "misses": (("inductor", "fxgraph_cache_miss"), ("aot_autograd", "autograd_cache_miss"))}


@contextmanager
def compile_cache(folder: str | Path) -> Iterator[Path]:
    """Keep torch.compile's on-disk caches in `folder` while the block runs (the environment is restored after)."""
    folder = Path(folder).expanduser()
    previous = {name: os.environ.get(name) for name in CACHE_VARIABLES}
    for name, subfolder in CACHE_VARIABLES.items():
        os.environ[name] = str(folder / subfolder)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    try:
        yield folder
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cache_counts() -> dict[str, int]:
    """Cache hits and misses of Inductor and AOTAutograd in this process so far."""
    from torch._dynamo.utils import counters

    return {kind: sum(counters[group][name] for group, name in keys) for kind, keys in COUNTERS.items()}


def cache_report(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """What the compilations between two `cache_counts` found: "warm" (everything from the cache), "cold"
    (nothing), "partial", or "none" (nothing was compiled)."""
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    state = "none" if hits + misses == 0 else "warm" if misses == 0 else "cold" if hits == 0 else "partial"
    return {"state": state, "hits": hits, "misses": misses, "folder": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
