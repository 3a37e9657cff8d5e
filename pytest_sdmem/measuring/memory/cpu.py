"""The memory backend of the "cpu" and "meta" devices: an exact storage counter as a meter.

The figures are those of a ``storage.StorageCounter`` that counts in every thread; the device's
name and total memory are read from the machine.
"""

from __future__ import annotations

import gc
import os
import platform

from pytest_sdmem.measuring.memory.storage import StorageCounter


class CpuBackend:
    """Memory backend for the "cpu" and "meta" device types, over a ``StorageCounter``.

    There is no caching allocator, so reserved equals allocated, and there are no allocator
    retries or OOM counters.
    """

    def __init__(self, device_type: str = "cpu"):
        if device_type not in ("cpu", "meta"):
            raise ValueError(f"CpuBackend counts 'cpu' or 'meta' storages, not {device_type!r}")
        self.device = device_type
        self.device_name = _cpu_name() if device_type == "cpu" else "meta (shapes only, no data)"
        self.total_memory = _physical_memory() if device_type == "cpu" else None
        self.counter = StorageCounter(device_type, all_threads=True)

    def allocated(self) -> int:
        """Live storage bytes: the running count while active, else a fresh gc snapshot."""
        if self.counter.active:
            return self.counter.current
        return self.counter.snapshot_bytes()

    def reserved(self) -> int:
        return self.allocated()

    def peak_allocated(self) -> int:
        """The peak since the last reset. No scan of live objects here: it would also count
        buffers no tensor op ever used (safetensors' file buffer of an fp32 load, alive while
        diffusers finishes loading, doubled that load's figure), which are not tensor memory
        the measured code computes with."""
        if self.counter.active:
            return self.counter.peak
        return self.counter.snapshot_bytes()

    def peak_reserved(self) -> int:
        return self.peak_allocated()

    def reset_peak(self) -> None:
        self.counter.reset_peak()

    def settle(self) -> None:
        """Collect garbage (dead cycles still hold storages) and catch up with the gc's view."""
        gc.collect()
        if self.counter.active:
            self.counter.rescan()

    def counters(self) -> dict[str, int]:
        return {"num_alloc_retries": 0, "num_ooms": 0}

    def process_bytes(self) -> int | None:
        """No driver-level view of a CPU device; host memory is the tracker's host RSS."""
        return None

    def activate(self) -> None:
        self.counter.activate()

    def deactivate(self) -> None:
        self.counter.deactivate()


def _cpu_name() -> str:
    """The CPU model for reports ("AMD EPYC 7B13"); platform.processor() is often empty."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
