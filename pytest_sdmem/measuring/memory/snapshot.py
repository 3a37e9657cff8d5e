"""Memory snapshots: what was alive at the peak, and which Python lines made it.

A budget failure says *how much* memory a test needed; the snapshot says *what* it was. While
a test runs, the recorder notes for each allocation the Python frames that made it, and
follows the peak: when a new peak is reached, the allocations alive at that moment are the
ones to report. The failure's report section then lists the largest of them, each with its
size and frames.

* CPU and meta: the exact storage counter (``memory/storage.py``) records frames for the storages
  it sees while recording is on, and nothing at all otherwise (normal runs pay nothing).
* CUDA: the caching allocator's own history (``torch.cuda.memory._record_memory_history``)
  does the recording; on failure the snapshot is written to a ``.pickle`` file that
  https://pytorch.org/memory_viz opens, and the allocator's event trace is replayed to find
  the peak and what was alive at it.

Nothing here imports torch at module level: the plugin imports this module in every run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_sdmem.base.atomic import write_atomic
from pytest_sdmem.base.units import format_size
from pytest_sdmem.measuring.memory import get_backend
from pytest_sdmem.measuring.memory.frames import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_TOP,
    Allocation,
    FrameFilter,
    PeakLiveSet,
    SnapshotReport,
)

if TYPE_CHECKING:
    from pytest_sdmem.measuring.memory.storage import StorageCounter

# Each history entry costs a few KB of host memory; 100k keeps a whole pipeline call of a few
# hundred steps while bounding that to some hundreds of MB (PyTorch's own guides use 100k).
DEFAULT_MAX_ENTRIES = 100_000

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 120



def snapshot_file_name(nodeid: str, suffix: str = ".pickle") -> str:
    """A file name for a test's snapshot: readable, safe on every filesystem, unique per node id.

    Characters outside ``[A-Za-z0-9._-]`` become ``_`` and long ids are cut, so two ids can
    sanitise alike (``test[a/b]`` and ``test[a_b]``); a short hash of the full id keeps them
    apart, and the same test always gets the same name.
    """
    readable = _UNSAFE_CHARS.sub("_", nodeid).strip("._-")[:_MAX_NAME_CHARS] or "test"
    digest = hashlib.sha1(nodeid.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}{suffix}"

def parse_cuda_snapshot(
    snapshot: Mapping[str, Any],
    device_index: int,
    *,
    top: int = DEFAULT_TOP,
    max_frames: int = DEFAULT_MAX_FRAMES,
    frame_filter: FrameFilter | None = None,
    max_entries: int | None = None,
) -> SnapshotReport:
    """The largest allocations alive at the peak, from a ``torch.cuda.memory._snapshot()`` dict.

    The snapshot's segments show memory *now*; the peak is found by replaying the device's
    event trace: ``alloc`` adds; ``free_requested`` removes, as it is when the allocator
    stops counting a block as allocated; ``free_completed`` only removes a block whose request
    is not in the trace. Frees of blocks not allocated in the trace belong to what was alive
    before recording. The replay gives the peak relative to the trace's start; the absolute
    figure is the live bytes now (the ``active_allocated`` blocks) shifted back by what the
    trace added after the peak.
    """
    frame_filter = frame_filter or FrameFilter()
    traces = snapshot.get("device_traces") or []
    trace = traces[device_index] if device_index < len(traces) else []
    peaks: PeakLiveSet[Mapping[str, Any]] = PeakLiveSet(level=0, untraced_count=0)
    live: dict[int, tuple[int, Mapping[str, Any]]] = {}  # addr -> (birth, alloc event)
    requested: set[int] = set()
    level = 0
    ooms = []

    for event in trace:
        action, addr = event.get("action"), event.get("addr")
        if action == "alloc":
            live[addr] = (peaks.born(), event)
            level += int(event["size"])
            peaks.level(level)
        elif action == "free_requested":
            requested.add(addr)
            level -= _free(live, peaks, event)
        elif action == "free_completed":
            if addr in requested:
                requested.discard(addr)  # already counted at its request
            elif addr in live:
                level -= _free(live, peaks, event)  # its request was not recorded
            # else: requested before the trace began, so already off the count
        elif action == "oom":
            ooms.append(event)

    live_now = untraced_now = 0
    for segment in snapshot.get("segments") or []:
        if segment.get("device", device_index) != device_index:
            continue
        for block in segment.get("blocks") or []:
            if block.get("state") == "active_allocated":
                live_now += int(block.get("requested_size", block["size"]))
                if block.get("address") not in live:
                    untraced_now += 1

    allocations = [
        Allocation(int(event["size"]), frame_filter.frames(event.get("frames") or [], max_frames))
        for event in peaks.at_peak(live.values())
    ]
    notes = []
    if ooms:
        last = ooms[-1]
        notes.append(
            f"the allocator ran out of memory {len(ooms)} time(s); the last request was "
            f"{format_size(int(last.get('size', 0)))} with "
            f"{format_size(int(last.get('device_free', 0)))} free on the device"
        )
    if max_entries is not None and len(trace) >= max_entries:
        notes.append(
            f"the history kept only the last {max_entries} allocator events: allocations "
            "older than those count as made before recording"
        )
    return SnapshotReport.from_live(
        f"cuda:{device_index}",
        live_now - level + peaks.peak,
        allocations,
        # made before recording: alive now, plus those freed after the peak
        untraced_count=untraced_now + peaks.untraced_at_peak - peaks.untraced_count,
        top=top,
        notes=notes,
    )


def _free(
    live: dict[int, tuple[int, Mapping[str, Any]]],
    peaks: PeakLiveSet[Mapping[str, Any]],
    event: Mapping[str, Any],
) -> int:
    """Replay a free; returns the bytes it releases (those of the allocation, where known)."""
    entry = live.pop(event["addr"], None)
    if entry is None:
        peaks.died_untraced()
        return int(event["size"])
    peaks.died(*entry)
    return int(entry[1]["size"])


class SnapshotRecorder(ABC):
    """Records one test's allocations, for the plugin: ``start()``, run the test, ``stop()``.

    ``for_device`` picks the implementation. ``stop`` always ends the recording; it builds a
    report (and on CUDA writes the snapshot file) only for a failed test, so passing tests pay
    for the recording alone. Start it after the test's memory tracker has settled the device,
    so that what the setup left alive counts as alive before recording.
    """

    def __init__(
        self,
        device: str,
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
        top: int = DEFAULT_TOP,
        hidden: Iterable[str | os.PathLike[str]] = (),
    ):
        if max_frames < 1 or top < 1:
            raise ValueError(f"max_frames and top must be at least 1, not {max_frames}, {top}")
        self.device = device
        self.max_frames = max_frames
        self.top = top
        self.hidden = tuple(hidden)
        self.recording = False

    @classmethod
    def for_device(
        cls,
        device: str,
        *,
        max_frames: int = DEFAULT_MAX_FRAMES,
        top: int = DEFAULT_TOP,
        hidden: Iterable[str | os.PathLike[str]] = (),
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> SnapshotRecorder:
        """The recorder for ``device`` ("cpu", "meta", "cuda", "cuda:N").

        Raises ``TrackerError`` where the device cannot be measured (CUDA missing), like
        ``get_backend``.
        """
        backend = get_backend(device)
        if backend.device.startswith("cuda"):
            return CudaSnapshotRecorder(
                backend.device, max_frames=max_frames, top=top, hidden=hidden,
                max_entries=max_entries,
            )
        return CpuSnapshotRecorder(backend.device, max_frames=max_frames, top=top, hidden=hidden)

    @abstractmethod
    def start(self) -> None:
        """Switch recording on."""

    @abstractmethod
    def stop(self, failed: bool, nodeid: str, directory: Path) -> SnapshotReport | None:
        """Switch recording off; for a failed test, return the report (and write the file)."""


class CpuSnapshotRecorder(SnapshotRecorder):
    """Frames recorded by the exact storage counter of the "cpu" or "meta" backend."""

    def start(self) -> None:
        self._counter().start_recording(
            max_frames=self.max_frames, frame_filter=FrameFilter(self.hidden)
        )
        self.recording = True

    def stop(self, failed: bool, nodeid: str, directory: Path) -> SnapshotReport | None:
        """No file on the CPU: the report section carries all the recorder knows."""
        self.recording = False
        report = self._counter().stop_recording(top=self.top)
        return report if failed else None

    def _counter(self) -> StorageCounter:
        from pytest_sdmem.measuring.memory.cpu import CpuBackend

        backend = get_backend(self.device)
        assert isinstance(backend, CpuBackend)  # for_device chose this class by the device
        return backend.counter


class CudaSnapshotRecorder(SnapshotRecorder):
    """The caching allocator's history, dumped for https://pytorch.org/memory_viz on failure."""

    def __init__(self, device: str, *, max_entries: int = DEFAULT_MAX_ENTRIES, **kwargs: Any):
        super().__init__(device, **kwargs)
        self.index = int(device.partition(":")[2] or 0)
        self.max_entries = max_entries

    def start(self) -> None:
        """Record this test's allocations with Python stacks (``compat.start_memory_history``).

        The history is process-wide (all devices) and replaces any recording the test session
        had switched on itself.
        """
        from pytest_sdmem.base.compat import start_memory_history

        start_memory_history(self.max_entries)
        self.recording = True

    def stop(self, failed: bool, nodeid: str, directory: Path) -> SnapshotReport | None:
        """Write ``directory/<sanitised nodeid>-<hash>.pickle`` for a failed test.

        One ``_snapshot()`` serves both the file (what ``_dump_snapshot`` would write) and the
        section, so the two agree. A file that cannot be written does not lose the section:
        the report says why the file is missing.
        """
        import torch

        try:
            if not failed:
                return None
            snapshot = torch.cuda.memory._snapshot()
        finally:
            self.recording = False
            torch.cuda.memory._record_memory_history(enabled=None)
        report = parse_cuda_snapshot(
            snapshot, self.index, top=self.top, max_frames=self.max_frames,
            frame_filter=FrameFilter(self.hidden), max_entries=self.max_entries,
        )
        path = Path(directory) / snapshot_file_name(nodeid)
        try:
            report.path = write_atomic(path, pickle.dumps(snapshot))
        except OSError as exc:
            report.notes.append(f"could not write the snapshot to {path}: {exc}")
        return report


