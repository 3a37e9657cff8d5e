"""What a memory snapshot reports, shared by the recorders (``memory/snapshot.py``) and the
exact CPU storage counter (``memory/storage.py``): the frames of an allocation and which of
them to show, the allocations alive at the peak, and the report rendered from them. It sits
below both, so that the counter and the recorders depend on it and not on each other.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from pytest_sdmem.base.units import format_size

MEMORY_VIZ_URL = "https://pytorch.org/memory_viz"
DEFAULT_MAX_FRAMES = 8
DEFAULT_TOP = 10

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
