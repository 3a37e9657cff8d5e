"""The memory meter's protocol, its report, and the tracker that measures blocks of code.

A tracker measures a block against one backend (one device): it settles the device, resets
the peak, and reads the peak back at the end. ``peak_allocated`` is absolute, like
``torch.cuda.max_memory_allocated``: tensors alive before the block (a pipeline's weights)
count; ``peak_delta`` is what the block added on top.

Peaks are process-wide state on a backend, yet two different trackers may be open at once
(the plugin measures the whole test call while the test body measures its own blocks). So
before any tracker resets a peak, the peak reached so far is folded into every open window;
each window's result is then the maximum of what was folded into it and the peak at its end.
An inner reset therefore never hides the outer block's earlier peak, and the outer block
still sees everything after the reset.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pytest_sdmem.base.units import format_size
from pytest_sdmem.measuring.memory.host import HOST_RSS, HostRssMeter, describe_method


class TrackerError(RuntimeError):
    """A measurement that cannot be made or was used wrongly; the message says which and why."""


class NestedTrackerError(TrackerError):
    """A tracker entered while it is already measuring a block."""


@runtime_checkable
class MemoryBackend(Protocol):
    """What a tracker needs from one device. Figures are bytes; peaks run since ``reset_peak``."""

    device: str
    device_name: str
    total_memory: int | None

    def allocated(self) -> int:
        """Bytes held by live tensors now."""

    def reserved(self) -> int:
        """Bytes the allocator holds from the driver now (allocated plus cache)."""

    def peak_allocated(self) -> int:
        """Highest ``allocated()`` since the last reset."""

    def peak_reserved(self) -> int:
        """Highest ``reserved()`` since the last reset."""

    def reset_peak(self) -> None:
        """Start a new peak window at the current figures."""

    def settle(self) -> None:
        """Finish queued work and drop garbage, so a reset starts from what is really alive."""

    def counters(self) -> dict[str, int]:
        """Cumulative allocator events: ``num_alloc_retries`` and ``num_ooms``."""

    def process_bytes(self) -> int | None:
        """The whole process's use of the device as the driver sees it; None where meaningless."""

    def activate(self) -> None:
        """Start live counting where the backend needs it (refcounted)."""

    def deactivate(self) -> None:
        """Undo one ``activate()``."""


@dataclass
class MemoryReport:
    """The figures of one measured block (or, merged, of the highest among several)."""

    device: str
    device_name: str
    peak_allocated: int
    peak_reserved: int
    start_allocated: int
    end_allocated: int
    host_peak_rss: int | None
    host_rss_method: str
    process_peak: int | None
    num_alloc_retries: int
    num_ooms: int

    @property
    def peak_delta(self) -> int:
        """What the block added on top of what was alive when it started."""
        return self.peak_allocated - self.start_allocated

    def __str__(self) -> str:
        parts = [
            f"{self.device} ({self.device_name}): peak allocated {format_size(self.peak_allocated)}"
            f" (+{format_size(self.peak_delta)} over {format_size(self.start_allocated)} at start)",
            f"peak reserved {format_size(self.peak_reserved)}",
            f"end allocated {format_size(self.end_allocated)}",
        ]
        if self.host_peak_rss is not None:
            parts.append(
                f"host peak RSS {format_size(self.host_peak_rss)} "
                f"({describe_method(self.host_rss_method)})"
            )
        if self.process_peak is not None:
            parts.append(f"process peak {format_size(self.process_peak)}")
        if self.num_alloc_retries or self.num_ooms:
            parts.append(f"{self.num_alloc_retries} allocator retries, {self.num_ooms} OOMs")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The figures for JSON and JUnit properties, with units in the key names."""
        return {
            "peak_allocated_bytes": self.peak_allocated,
            "peak_reserved_bytes": self.peak_reserved,
            "start_allocated_bytes": self.start_allocated,
            "end_allocated_bytes": self.end_allocated,
            "peak_delta_bytes": self.peak_delta,
            "host_peak_rss_bytes": self.host_peak_rss,
            "host_rss_method": self.host_rss_method,
            "process_peak_bytes": self.process_peak,
            "num_alloc_retries": self.num_alloc_retries,
            "num_ooms": self.num_ooms,
        }

    @classmethod
    def merge_max(cls, reports: Iterable[MemoryReport]) -> MemoryReport:
        """The highest figures among several blocks, which is what a budget is checked against.

        Each peak is the maximum over the blocks. ``start_allocated`` comes from the block with
        the highest ``peak_allocated``, so ``peak_delta`` stays that block's own delta;
        ``end_allocated`` is the last block's; retries and OOMs are summed.
        """
        reports = list(reports)
        if not reports:
            raise ValueError("merge_max needs at least one MemoryReport")
        top = max(reports, key=lambda r: r.peak_allocated)
        return cls(
            device=top.device,
            device_name=top.device_name,
            peak_allocated=top.peak_allocated,
            peak_reserved=max(r.peak_reserved for r in reports),
            start_allocated=top.start_allocated,
            end_allocated=reports[-1].end_allocated,
            host_peak_rss=_max_known(r.host_peak_rss for r in reports),
            host_rss_method=top.host_rss_method,
            process_peak=_max_known(r.process_peak for r in reports),
            num_alloc_retries=sum(r.num_alloc_retries for r in reports),
            num_ooms=sum(r.num_ooms for r in reports),
        )


def _max_known(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass
class _Window:
    """An open block: its starting figures and the peaks folded into it by later resets."""

    backend: MemoryBackend
    host: HostRssMeter
    start_allocated: int
    start_counters: dict[str, int]
    start_process: int | None
    peak_allocated: int = 0
    peak_reserved: int = 0
    host_peak: int | None = None

    def fold(self, backend: MemoryBackend) -> None:
        """Keep the peaks reached so far before ``backend`` (and the host mark) is reset."""
        if self.backend is backend:
            self.peak_allocated = max(self.peak_allocated, backend.peak_allocated())
            self.peak_reserved = max(self.peak_reserved, backend.peak_reserved())
        self.host_peak = _max_known((self.host_peak, self.host.peak()))


# Every open window in the process: device peaks are per backend, but the host high-water
# mark is process-wide, so a reset for any block must fold into all of them.
_OPEN: list[_Window] = []
_OPEN_LOCK = threading.RLock()


def _report_field(name: str) -> property:
    def get(self: MemoryTracker) -> Any:
        return getattr(self.last_report, name)

    return property(get, doc=f"``{name}`` of the last measured block.")


class MemoryTracker:
    """Measures blocks of code on one backend: ``with tracker as m: ...`` or ``start()``/``stop()``.

    The same tracker can measure several blocks one after the other (``reports`` keeps them
    all; the attributes mirror the last one). Entering it while it is measuring is an error:
    it has one start figure and one peak window, and silently restarting them would lose
    the outer block's figures.
    """

    def __init__(self, backend: MemoryBackend, host: HostRssMeter = HOST_RSS):
        self.backend = backend
        self.host = host
        self.reports: list[MemoryReport] = []
        self._window: _Window | None = None

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def device_name(self) -> str:
        return self.backend.device_name

    @property
    def measuring(self) -> bool:
        """Whether a block is open."""
        return self._window is not None

    @property
    def last_report(self) -> MemoryReport:
        """The last finished block's report."""
        if not self.reports:
            raise TrackerError(
                f"no block measured yet on {self.device}: read the figures after "
                "`with tracker: ...` (or tracker.stop())"
            )
        return self.reports[-1]

    peak_allocated = _report_field("peak_allocated")
    peak_reserved = _report_field("peak_reserved")
    start_allocated = _report_field("start_allocated")
    end_allocated = _report_field("end_allocated")
    peak_delta = _report_field("peak_delta")
    host_peak_rss = _report_field("host_peak_rss")
    host_rss_method = _report_field("host_rss_method")
    process_peak = _report_field("process_peak")

    def start(self) -> MemoryTracker:
        """Settle the device, reset its peaks (folding them into open blocks) and open a block."""
        if self._window is not None:
            raise NestedTrackerError(
                f"this memory tracker ({self.device}) is already measuring a block: "
                "`with tracker:` blocks cannot be nested; close the first block before "
                "entering it again, or use a second tracker for the inner region"
            )
        backend = self.backend
        backend.activate()
        try:
            backend.settle()
            with _OPEN_LOCK:
                for window in _OPEN:
                    window.fold(backend)
                backend.reset_peak()
                self.host.reset()
                window = _Window(
                    backend=backend,
                    host=self.host,
                    start_allocated=backend.allocated(),
                    start_counters=backend.counters(),
                    start_process=_process_bytes(backend),
                )
                _OPEN.append(window)
        except BaseException:
            backend.deactivate()
            raise
        self._window = window
        return self

    def stop(self) -> MemoryReport:
        """Close the block, record its report and return it."""
        window = self._window
        if window is None:
            raise TrackerError(f"memory tracker ({self.device}) stopped without being started")
        backend = self.backend
        try:
            with _OPEN_LOCK:
                window.fold(backend)
                _OPEN.remove(window)
            counters = backend.counters()
            end_allocated = backend.allocated()
            end_reserved = backend.reserved()
            end_process = _process_bytes(backend)
        finally:
            self._window = None
            backend.deactivate()
        report = MemoryReport(
            device=backend.device,
            device_name=backend.device_name,
            peak_allocated=window.peak_allocated,
            peak_reserved=window.peak_reserved,
            start_allocated=window.start_allocated,
            end_allocated=end_allocated,
            host_peak_rss=window.host_peak,
            host_rss_method=self.host.method,
            process_peak=_process_peak(window, end_process, end_reserved),
            num_alloc_retries=_delta(counters, window.start_counters, "num_alloc_retries"),
            num_ooms=_delta(counters, window.start_counters, "num_ooms"),
        )
        self.reports.append(report)
        return report

    def __enter__(self) -> MemoryTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __str__(self) -> str:
        if not self.reports:
            return f"memory tracker ({self.device}): no block measured yet"
        return str(self.reports[-1])


def _process_bytes(backend: MemoryBackend) -> int | None:
    """The driver's figure, or None when it cannot be had (the plugin reports why for 'process')."""
    try:
        return backend.process_bytes()
    except TrackerError:
        return None


def _process_peak(window: _Window, end_process: int | None, end_reserved: int) -> int | None:
    """Estimate the process's peak device use from two driver samples and the reserved peak.

    The driver only gives the current figure. What the process holds beyond the caching
    allocator (context, libraries) is taken as constant, so the peak is the end figure with
    the end's reserved bytes replaced by the peak reserved bytes.
    """
    if end_process is None:
        return None
    estimate = end_process - end_reserved + window.peak_reserved
    return max(estimate, end_process, window.start_process or 0)


def _delta(now: dict[str, int], before: dict[str, int], key: str) -> int:
    return now.get(key, 0) - before.get(key, 0)
