"""A counted storage's weak reference, and what a recording counter keeps about each storage.

Every storage a ``storage.StorageCounter`` counts holds a ``StorageRef``, whose callback
subtracts its bytes when the storage is released. While the counter records for a memory
snapshot (``start_recording``), each storage it counts gets a ``RecordedRef`` instead, which
also carries the frames that made it (``Record``), and a ``Recording`` follows the storages
alive at the peak (``frames.PeakLiveSet``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from pytest_sdmem.measuring.memory.frames import Allocation, Frame, FrameFilter, PeakLiveSet


@dataclass(slots=True)
class Record:
    """Where a storage counted while recording came from.

    Kept as found (frame tuples, the ``torch.dtype``, the ``torch.Size``): turning them into
    text is left to the report, made once, rather than done for every storage.
    """

    birth: int
    nbytes: int
    frames: tuple[tuple[str, int, str], ...]
    dtype: torch.dtype | None = None
    shape: torch.Size | None = None
    note: str = ""

    def allocation(self) -> Allocation:
        return Allocation(
            self.nbytes,
            tuple(map(Frame._make, self.frames)),
            str(self.dtype).removeprefix("torch.") if self.dtype is not None else None,
            tuple(self.shape) if self.shape is not None else None,
            self.note,
        )


class StorageRef(weakref.ref):
    """Weak reference to a counted storage that remembers its key and the bytes counted for it.

    Keeping both on the reference lets the free callback subtract without touching the (dead)
    storage, and lets a stale callback recognise that its key was re-used by a newer storage.
    """

    __slots__ = ("key", "nbytes")

    def __new__(cls, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int):
        return super().__new__(cls, storage, callback)

    def __init__(self, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int):
        super().__init__(storage, callback)
        self.key = key
        self.nbytes = nbytes


class RecordedRef(StorageRef):
    """The reference of a storage counted while recording: it also carries the record.

    A subclass, so that counting without recording does not pay for the extra field.
    ``record`` is cleared when the recording stops.
    """

    __slots__ = ("record",)

    def __new__(cls, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int,
                record: Record):
        return super().__new__(cls, storage, callback, key, nbytes)

    def __init__(self, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int,
                 record: Record):
        super().__init__(storage, callback, key, nbytes)
        self.record: Record | None = record


_SCANNED_NOTE = "no frames: found by a gc scan, made outside the dispatcher or in another thread"


@dataclass
class Recording:
    """The state of one recording: how to take frames, and the peak's live set."""

    frame_filter: FrameFilter
    max_frames: int
    peaks: PeakLiveSet[Record]

    def record(self, nbytes: int, tensor: torch.Tensor | None, scanned: bool) -> Record:
        """A new record for a storage being counted now, with the frames that made it."""
        birth = self.peaks.born()
        if scanned:
            return Record(birth, nbytes, (), note=_SCANNED_NOTE)
        frames = self.frame_filter.stack(self.max_frames)
        if tensor is None:
            return Record(birth, nbytes, frames)
        return Record(birth, nbytes, frames, tensor.dtype, tensor.shape)

    def died(self, ref: StorageRef) -> None:
        record = record_of(ref)
        if record is None:
            self.peaks.died_untraced()
        else:
            self.peaks.died(record.birth, record)

    def resized(self, ref: StorageRef, tensor: torch.Tensor | None) -> None:
        """A recorded storage changed size: the old size dies, the new one is born here."""
        if isinstance(ref, RecordedRef) and ref.record is not None:
            self.died(ref)
            ref.record = self.record(ref.nbytes, tensor, scanned=False)


def record_of(ref: StorageRef) -> Record | None:
    """The record of a storage counted during this recording; None for one counted before."""
    return ref.record if isinstance(ref, RecordedRef) else None

