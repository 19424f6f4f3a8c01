"""Counting every tensor-to-host conversion in a stretch of code, on any device.

On a GPU each of these waits for every kernel queued before it (a host synchronization): `.item()`, `bool()`,
`float()`, `int()`, `.tolist()`, `.numpy()`, `.cpu()`, and a blocking `.to()` or `.copy_()` from the device to
the CPU. On the CPU they cost nothing, but the code that makes them is the same, so counting them in a CPU run
finds the waits a GPU run would have (`tests/test_host_syncs.py`). One kind cannot be seen on the CPU: a blocking
`.to("cpu")` of data that a GPU run would hold on the device (on the CPU it moves nothing), so `.to()` and
`.copy_()` count only when they really move a tensor to the CPU. `benchmarks/sync_check.py` asks CUDA itself
on a GPU.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

CONVERSIONS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
                         "__complex__", "__format__"})
IGNORED_FILES = ("torch/overrides.py", "torch/utils/_device.py", "cifar_lit/host_sync.py")


def _blocking_copy_to_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a `Tensor.to(...)` or `Tensor.copy_(...)` call moves device data to the CPU and waits for it."""
    if kwargs.get("non_blocking") or any(arg is True for arg in args[1:]):
        return False
    if name == "copy_":
        destination, source = args[0], args[1] if len(args) > 1 else kwargs.get("src")
        return isinstance(source, torch.Tensor) and destination.device.type == "cpu" and source.device.type != "cpu"
    tensor = args[0]
    targets = [kwargs.get("device"), *args[1:2]]
    to_cpu = any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets if t is not None)
    return to_cpu and isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu"


class HostSyncCounter(TorchFunctionMode):
    """A torch function mode that counts conversions to the host by kind and by the line of code that asked."""

    def __init__(self) -> None:
        super().__init__()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.by_site: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in CONVERSIONS or (name in ("to", "copy_") and _blocking_copy_to_host(name, args, kwargs)):
            self.by_kind[name] += 1
            self.by_site[_caller()] += 1
        return func(*args, **kwargs)


def _caller() -> str:
    """The innermost frame of the stack that is not this module or torch's dispatch machinery."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename.replace("\\", "/") for part in IGNORED_FILES):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "?"
