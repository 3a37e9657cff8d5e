"""Memory snapshots: what was alive at the peak, and which Python lines made it.

A budget failure says *how much* memory a test needed; the snapshot says *what* it was. While
a test runs, the recorder notes for each allocation the Python frames that made it, and
follows the peak: when a new peak is reached, the allocations alive at that moment are the
ones to report. The failure's report section then lists the largest of them, each with its
size and frames.

* CPU and meta: the exact storage counter (``memory/cpu.py``) records frames for the storages
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
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from pytest_sdmem.atomic import write_atomic
from pytest_sdmem.memory import get_backend
from pytest_sdmem.units import format_size

if TYPE_CHECKING:
    from pytest_sdmem.memory.cpu import StorageCounter

MEMORY_VIZ_URL = "https://pytorch.org/memory_viz"
DEFAULT_MAX_FRAMES = 8
DEFAULT_TOP = 10
# Each history entry costs a few KB of host memory; 100k keeps a whole pipeline call of a few
# hundred steps while bounding that to some hundreds of MB (PyTorch's own guides use 100k).
DEFAULT_MAX_ENTRIES = 100_000

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 120
_HARNESS_PACKAGES = ("_pytest", "pluggy")
_SHOW, _SKIP, _END = range(3)  # what a frame's file means for the walk (FrameFilter)

_T = TypeVar("_T")


class Frame(NamedTuple):
    """One Python frame: a tuple, so that the recorder stores frames without building objects."""

    filename: str
    line: int
    name: str

    def render(self, roots: Sequence[str] = ()) -> str:
        """``file:line in function``, the file relative to the first of ``roots`` it lies under."""
        filename = self.filename
        for root in roots:
            if filename.startswith(os.path.join(root, "")):
                filename = filename[len(os.path.join(root, "")) :]
                break
        return f"{filename}:{self.line} in {self.name}"


class FrameFilter:
    """Picks the frames that say where an allocation came from, innermost first.

    Frames of torch itself (dispatch, ``nn.Module.__call__``) and of pytest_sdmem (the counting
    mode, the pipeline runner) would otherwise fill the limited depth before the first line
    the user wrote: they are skipped, as are those under the ``hidden`` directories. A frame
    of the test harness (pytest, pluggy; recognised when already imported, never imported
    from here) ends the walk: everything further out is the harness calling the test, and
    walking it for every new storage would cost more than the rest of the recording.
    """

    def __init__(self, hidden: Iterable[str | os.PathLike[str]] = ()):
        import torch

        internal = [os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__))]
        internal.extend(os.fspath(path) for path in hidden)
        harness = [
            os.path.dirname(module.__file__)
            for module in map(sys.modules.get, _HARNESS_PACKAGES)
            if module is not None and getattr(module, "__file__", None)
        ]
        self._internal = _prefixes(internal)
        self._harness = _prefixes(harness)
        self._kinds: dict[str, int] = {}

    def _kind(self, filename: str) -> int:
        """_SHOW, _SKIP or _END for frames of ``filename`` (cached: walks ask for every frame)."""
        kind = self._kinds.get(filename)
        if kind is None:
            if filename.startswith(self._harness):
                kind = _END
            elif filename.startswith(self._internal):
                kind = _SKIP
            else:
                kind = _SHOW
            self._kinds[filename] = kind
        return kind

    def stack(self, max_frames: int) -> tuple[tuple[str, int, str], ...]:
        """The caller's shown frames, innermost first, at most ``max_frames``.

        A walk of ``sys._getframe`` rather than ``traceback.extract_stack``: it stops as soon
        as it has enough frames, builds no objects for skipped ones and reads no source.
        """
        frames: list[tuple[str, int, str]] = []
        frame = sys._getframe(1)
        kinds = self._kinds  # the cache, read inline: this loop runs for every frame
        while frame is not None:
            code = frame.f_code
            filename = code.co_filename
            kind = kinds.get(filename)
            if kind is None:
                kind = self._kind(filename)
            if kind == _SHOW:
                frames.append((filename, frame.f_lineno, code.co_name))
                if len(frames) == max_frames:
                    break
            elif kind == _END:
                break
            frame = frame.f_back
        return tuple(frames)

    def frames(self, raw: Iterable[Mapping[str, Any]], max_frames: int) -> tuple[Frame, ...]:
        """Shown frames out of a CUDA snapshot's frame dicts (innermost first, like ``stack``)."""
        shown: list[Frame] = []
        for item in raw:
            filename = str(item.get("filename", "?"))
            kind = self._kind(filename)
            if kind == _SHOW:
                shown.append(Frame(filename, int(item.get("line", 0)), str(item.get("name", "?"))))
                if len(shown) == max_frames:
                    break
            elif kind == _END:
                break
        return tuple(shown)


def _prefixes(roots: Iterable[str]) -> tuple[str, ...]:
    """Directory prefixes for ``str.startswith``, both as given and with links resolved."""
    found = {os.path.join(path, "") for root in roots for path in (root, os.path.realpath(root))}
    return tuple(sorted(found))


@dataclass
class Allocation:
    """One allocation alive at the peak: its size and where it was made."""

    nbytes: int
    frames: tuple[Frame, ...] = ()
    dtype: str | None = None  # of the first tensor seen on the storage (CPU only)
    shape: tuple[int, ...] | None = None
    note: str = ""  # why frames are missing, when they are

    def describe(self) -> str:
        """The headline of the entry: size, then dtype and shape where known."""
        parts = [format_size(self.nbytes)]
        if self.dtype is not None:
            parts.append(self.dtype)
        if self.shape is not None:
            parts.append(f"[{', '.join(map(str, self.shape))}]")
        if self.note:
            parts.append(f"({self.note})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.nbytes,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
            "note": self.note,
            "frames": [f._asdict() for f in self.frames],
        }


@dataclass
class SnapshotReport:
    """The allocations alive at the peak of a recorded block, largest first.

    ``allocations`` are those made while recording, up to the requested number; the rest made
    while recording is summed in ``unlisted_*``. What was already alive when recording
    started (a pipeline's weights, loaded in a fixture) has no frames and is summed in
    ``untraced_*``. ``path`` is the snapshot file written for the failure (CUDA).
    """

    device: str
    peak_bytes: int
    allocations: list[Allocation]
    unlisted_bytes: int = 0
    unlisted_count: int = 0
    untraced_bytes: int = 0
    untraced_count: int | None = None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    @classmethod
    def from_live(
        cls,
        device: str,
        peak_bytes: int,
        live: Sequence[Allocation],
        *,
        untraced_count: int | None,
        top: int,
        notes: Sequence[str] = (),
    ) -> SnapshotReport:
        """Build the report from every recorded allocation alive at the peak.

        What the peak holds beyond the recorded allocations was there before recording.
        """
        ordered = sorted(live, key=lambda a: a.nbytes, reverse=True)
        listed, rest = ordered[:top], ordered[top:]
        return cls(
            device=device,
            peak_bytes=peak_bytes,
            allocations=listed,
            unlisted_bytes=sum(a.nbytes for a in rest),
            unlisted_count=len(rest),
            untraced_bytes=max(peak_bytes - sum(a.nbytes for a in ordered), 0),
            untraced_count=untraced_count,
            notes=list(notes),
        )

    def as_section(self) -> tuple[str, str]:
        """The report section: title and text.

        Files are shown relative to the working directory, or else to the import path entry
        holding them (``diffusers/models/attention.py`` rather than a site-packages path).
        """
        roots = [os.getcwd(), *sorted(filter(None, sys.path), key=len, reverse=True)]
        lines = [
            f"largest live allocations at the peak on {self.device} "
            f"({format_size(self.peak_bytes)} live):"
        ]
        for allocation in self.allocations:
            lines.append(f"  {allocation.describe()}")
            lines.extend(f"      {frame.render(roots)}" for frame in allocation.frames)
        if self.unlisted_count:
            lines.append(
                f"  + {self.unlisted_count} smaller allocations: {format_size(self.unlisted_bytes)}"
            )
        if self.untraced_bytes:
            count = f" in {self.untraced_count} allocations" if self.untraced_count else ""
            lines.append(
                f"  + {format_size(self.untraced_bytes)}{count} alive before recording "
                "started (no frames)"
            )
        lines.extend(f"note: {note}" for note in self.notes)
        if self.path is not None:
            lines.append(f"snapshot written to {self.path}: open it at {MEMORY_VIZ_URL}")
        return ("sdmem: memory snapshot", "\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "peak_bytes": self.peak_bytes,
            "path": str(self.path) if self.path is not None else None,
            "allocations": [a.to_dict() for a in self.allocations],
            "unlisted_bytes": self.unlisted_bytes,
            "unlisted_count": self.unlisted_count,
            "untraced_bytes": self.untraced_bytes,
            "untraced_count": self.untraced_count,
            "notes": list(self.notes),
        }


def snapshot_file_name(nodeid: str, suffix: str = ".pickle") -> str:
    """A file name for a test's snapshot: readable, safe on every filesystem, unique per node id.

    Characters outside ``[A-Za-z0-9._-]`` become ``_`` and long ids are cut, so two ids can
    sanitise alike (``test[a/b]`` and ``test[a_b]``); a short hash of the full id keeps them
    apart, and the same test always gets the same name.
    """
    readable = _UNSAFE_CHARS.sub("_", nodeid).strip("._-")[:_MAX_NAME_CHARS] or "test"
    digest = hashlib.sha1(nodeid.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}{suffix}"


class PeakLiveSet(Generic[_T]):
    """Which allocations are alive at the highest level reached, in constant time per event.

    Every allocation gets a birth number. A new peak remembers the last birth number; from
    then on, an allocation born at or before it that dies is kept aside, since it was alive at
    the peak. At the end, the allocations alive at the peak are the survivors born by then
    plus those kept aside. Nothing is copied when a peak is reached, which happens at every
    allocation while memory only grows (loading weights).

    Allocations made before recording have no birth number; only their count is followed.
    """

    def __init__(self, level: int, untraced_count: int):
        self.peak = level
        self.untraced_count = untraced_count
        self.untraced_at_peak = untraced_count
        self._births = 0
        self._peak_birth = 0
        self._freed_since_peak: list[_T] = []

    def born(self) -> int:
        """The birth number of a new allocation (call ``level`` once it is counted)."""
        self._births += 1
        return self._births

    def level(self, level: int) -> None:
        """The live bytes now; a new peak makes the allocations alive now the ones to report."""
        if level > self.peak:
            self.peak = level
            self._peak_birth = self._births
            self._freed_since_peak = []
            self.untraced_at_peak = self.untraced_count

    def died(self, birth: int, item: _T) -> None:
        """A recorded allocation was freed."""
        if birth <= self._peak_birth:
            self._freed_since_peak.append(item)

    def died_untraced(self) -> None:
        """An allocation made before recording was freed."""
        self.untraced_count -= 1

    def at_peak(self, survivors: Iterable[tuple[int, _T]]) -> list[_T]:
        """The allocations alive at the peak, given ``(birth, item)`` of those still alive."""
        peak_birth = self._peak_birth
        return [item for birth, item in survivors if birth <= peak_birth] + self._freed_since_peak


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
        from pytest_sdmem.memory.cpu import CpuBackend

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
        from pytest_sdmem.compat import start_memory_history

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


