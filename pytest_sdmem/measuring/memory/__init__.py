"""Memory meters: one backend per device, trackers that measure blocks against it.

``get_backend(device)`` hands out one backend per device per process, because peaks and
live counts are process-wide state: two backends for one device would reset each other's
peaks without folding them.
"""

from __future__ import annotations

import re
import threading

from pytest_sdmem.measuring.memory import threads
from pytest_sdmem.measuring.memory.tracker import (
    MemoryBackend,
    MemoryReport,
    MemoryTracker,
    NestedTrackerError,
    TrackerError,
)

__all__ = [
    "MemoryBackend",
    "MemoryReport",
    "MemoryTracker",
    "NestedTrackerError",
    "TrackerError",
    "get_backend",
    "normalize_device",
]

ACCEPTED_DEVICES = "'cpu', 'meta', 'cuda' (= 'cuda:0') or 'cuda:N' with N a device index"

threads.install()  # as early as possible: only threads started later can be counted

_CUDA_RE = re.compile(r"cuda(?::(\d+))?")
_BACKENDS: dict[str, MemoryBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def normalize_device(device: str) -> str:
    """The canonical name of a device: "cpu", "meta" or "cuda:N" ("cuda" is "cuda:0")."""
    name = str(device)
    if name in ("cpu", "meta"):
        return name
    match = _CUDA_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown device {device!r}: expected {ACCEPTED_DEVICES}")
    return f"cuda:{int(match.group(1) or 0)}"


def get_backend(device: str) -> MemoryBackend:
    """The process's backend for ``device``; raises TrackerError when CUDA is not there."""
    name = normalize_device(device)
    # Backends are imported here, not at the top, so that importing the package (the plugin
    # does, in every pytest run) does not import torch until something is measured.
    with _BACKENDS_LOCK:
        backend = _BACKENDS.get(name)
        if backend is None:
            if name.startswith("cuda"):
                from pytest_sdmem.measuring.memory.cuda import CudaBackend

                backend = CudaBackend(name)
            else:
                from pytest_sdmem.measuring.memory.cpu import CpuBackend

                backend = CpuBackend(name)
            _BACKENDS[name] = backend
        return backend
