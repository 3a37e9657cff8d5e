"""Exact live tensor-storage accounting for one torch device type ("cpu", "meta").

The CPU has no caching allocator with statistics, so "how much tensor memory is alive" is
counted from the tensors themselves, exact to the byte:

* at activation, the garbage collector's view of live objects gives the tensors (and bare
  storages) that already exist; each distinct storage (key ``storage._cdata``, the address of
  its ``StorageImpl``) is counted once;
* from then on a ``TorchDispatchMode`` sees every op's inputs and outputs; a storage not yet
  known is added, a view of a known storage adds nothing, a storage whose ``nbytes`` changed
  (``resize_``, ``out=``) is updated. Dispatch modes are per thread: the mode is pushed in the
  activating thread, and for the backend's counter (``all_threads``) in every thread that
  ``threads`` entered: each thread started after the first all-threads counter was created
  runs one for its whole life, doing nothing while no counter is active. An older thread
  cannot be entered, so activating while one is alive is an error naming it rather than a
  figure that silently misses its tensors;
* a storage made without a dispatched op (``torch.frombuffer``, ``torch.UntypedStorage(n)``)
  counts from the first op that touches it; one that no op touches is not counted;
* every counted storage holds a ``weakref`` whose callback subtracts its bytes. torch keeps a
  storage's Python object alive for as long as the ``StorageImpl`` lives, so the callback
  fires exactly when the memory is released, not when user code drops its last Python name.

"meta" storages have ``nbytes`` but no data, so the same counter sizes a pipeline built on
the meta device without allocating it (the estimator relies on that).

For memory snapshots the counter can also *record* (``start_recording``): each storage it
counts from then on keeps the Python frames that made it, and the storages alive at the peak
are followed (``frames.PeakLiveSet``). Without recording none of that runs: all it adds to
the counting path is a check or two for ``None`` per new storage and one per free.
"""

from __future__ import annotations

import gc
import os
import platform
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass

from pytest_sdmem.measuring.memory import threads
from pytest_sdmem.measuring.memory.frames import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_TOP,
    Allocation,
    Frame,
    FrameFilter,
    PeakLiveSet,
    SnapshotReport,
)
from pytest_sdmem.measuring.memory.tracker import TrackerError

# Argument types that never hold a tensor; skipping them by type keeps the walk over an op's
# size and stride lists cheap.
_LEAF_TYPES = frozenset(
    {int, float, bool, complex, str, type(None)}
    | {torch.dtype, torch.device, torch.layout, torch.memory_format}
)


@dataclass(slots=True)
class _Record:
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


class _StorageRef(weakref.ref):
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


class _RecordedRef(_StorageRef):
    """The reference of a storage counted while recording: it also carries the record.

    A subclass, so that counting without recording does not pay for the extra field.
    ``record`` is cleared when the recording stops.
    """

    __slots__ = ("record",)

    def __new__(cls, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int,
                record: _Record):
        return super().__new__(cls, storage, callback, key, nbytes)

    def __init__(self, storage: torch.UntypedStorage, callback: Any, key: int, nbytes: int,
                 record: _Record):
        super().__init__(storage, callback, key, nbytes)
        self.record: _Record | None = record


_SCANNED_NOTE = "no frames: found by a gc scan, made outside the dispatcher or in another thread"


@dataclass
class _Recording:
    """The state of one recording: how to take frames, and the peak's live set."""

    frame_filter: FrameFilter
    max_frames: int
    peaks: PeakLiveSet[_Record]

    def record(self, nbytes: int, tensor: torch.Tensor | None, scanned: bool) -> _Record:
        """A new record for a storage being counted now, with the frames that made it."""
        birth = self.peaks.born()
        if scanned:
            return _Record(birth, nbytes, (), note=_SCANNED_NOTE)
        frames = self.frame_filter.stack(self.max_frames)
        if tensor is None:
            return _Record(birth, nbytes, frames)
        return _Record(birth, nbytes, frames, tensor.dtype, tensor.shape)

    def died(self, ref: _StorageRef) -> None:
        record = _record_of(ref)
        if record is None:
            self.peaks.died_untraced()
        else:
            self.peaks.died(record.birth, record)

    def resized(self, ref: _StorageRef, tensor: torch.Tensor | None) -> None:
        """A recorded storage changed size: the old size dies, the new one is born here."""
        if isinstance(ref, _RecordedRef) and ref.record is not None:
            self.died(ref)
            ref.record = self.record(ref.nbytes, tensor, scanned=False)


def _record_of(ref: _StorageRef) -> _Record | None:
    """The record of a storage counted during this recording; None for one counted before."""
    return ref.record if isinstance(ref, _RecordedRef) else None


class _CountingMode(TorchDispatchMode):
    """Dispatch mode that shows the counter every tensor an op reads or returns.

    It returns the op's outputs unchanged and never alters arguments, so code under it
    behaves as without it.
    """

    # Higher-order operators (flex_attention, cond, ...) otherwise raise NotImplementedError
    # under any user mode. They pass through __torch_dispatch__ like ops: their outputs are
    # counted, what they allocate and free inside is not.
    supports_higher_order_operators = True

    def __init__(self, counter: StorageCounter | None):
        """``counter`` None: a thread's lifelong mode, counting for the active all-threads
        counters (``_ACTIVE``), and doing nothing while there is none."""
        super().__init__()
        self._counter = counter

    def _see(self) -> Any:
        """The function to show each tensor to, or None when no counter is listening."""
        if self._counter is not None:
            return self._counter.see
        active = _ACTIVE
        if not active:
            return None
        if len(active) == 1:
            return active[0].see
        return lambda tensor: [counter.see(tensor) for counter in active]

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Let ``torch.compile`` compile while counting is on.

        With the default (False) dynamo refuses to compile under any user dispatch mode and
        silently runs eagerly, which would change what a ``torch.compile`` technique measures
        (latency above all). The price: buffers a compiled artifact allocates and frees without
        passing through the dispatcher are not seen (its outputs and extern-kernel buffers are).
        """
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        see = self._see()
        if see is None:  # a thread's lifelong mode while nothing is measured
            return func(*args, **(kwargs or {}))
        # The top level is unrolled here because this runs for every op: a function call per
        # argument would cost more than the counting itself.
        for arg in args:
            if isinstance(arg, torch.Tensor):
                see(arg)
            elif type(arg) not in _LEAF_TYPES:
                _visit(arg, see)
        if kwargs:
            _visit(kwargs, see)
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            see(out)
        else:
            _visit(out, see)
        return out


def _visit(obj: Any, see: Any) -> None:
    """Call ``see`` on every tensor in an op's arguments or outputs.

    aten schemas only nest tensors in tuples and lists, which are walked directly: going
    through ``pytree.tree_leaves`` for every op costs about 5 µs, more than the rest of the
    per-op work together. Any other container pytree knows is still handed to pytree.
    """
    if isinstance(obj, torch.Tensor):
        see(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            if type(item) not in _LEAF_TYPES:
                _visit(item, see)
    elif isinstance(obj, dict):
        for item in obj.values():
            if type(item) not in _LEAF_TYPES:
                _visit(item, see)
    elif type(obj) in pytree.SUPPORTED_NODES:
        for leaf in pytree.tree_leaves(obj):
            if isinstance(leaf, torch.Tensor):
                see(leaf)


# The active counters that count in every thread (``all_threads``), which the lifelong mode of
# each entered thread serves. Replaced, never mutated, so a dispatch reads it without a lock.
_ACTIVE: tuple[StorageCounter, ...] = ()
_ACTIVE_LOCK = threading.Lock()


def enter_thread() -> None:
    """Run a counting mode in the calling thread until it ends (``threads`` calls this at the
    start of every new thread): it counts for whichever all-threads counters are active.

    The mode is left again when the thread's ``run`` has returned (threading then calls the
    thread's ``_delete``): a dispatch mode still on a thread's mode stack when the thread ends
    is freed by torch without the interpreter, which aborts the process at exit
    ("terminate called without an active exception")."""
    mode = _CountingMode(None)
    mode.__enter__()
    thread = threading.current_thread()
    finish = getattr(thread, "_delete", None)
    if finish is None:  # a Python without the hook: the mode stays to the thread's end
        return

    def leave_then_finish() -> None:
        mode.__exit__(None, None, None)
        finish()

    thread._delete = leave_then_finish  # type: ignore[method-assign]


class StorageCounter:
    """Current and peak live bytes of the tensor storages of one device type.

    Activation is refcounted so that several trackers (the plugin's whole-call tracker and a
    test's own blocks) share one dispatch mode and one set of weak references. The figures
    only move while active; ``snapshot_bytes()`` counts from scratch at any time.

    With ``all_threads`` (the memory backend's counter: a budget is the process's) it counts
    in every thread ``threads`` entered, and refuses to activate while another is alive;
    without it, only in the activating thread (the estimator's simulated device follows the
    one thread that builds and runs the pipeline).
    """

    def __init__(self, device_type: str, *, all_threads: bool = False):
        self.device_type = device_type
        self._refs: dict[int, _StorageRef] = {}
        self._current = 0
        self._peak = 0
        self._active = 0
        self._mode: _CountingMode | None = None
        self._mode_thread: int | None = None
        self.all_threads = all_threads
        if all_threads:
            threads.enable()  # threads started from now on run the counting mode
        self._recording: _Recording | None = None
        # Reentrant: a free callback can run in the middle of our own bookkeeping when an
        # allocation there triggers a garbage collection that frees a tensor in this thread.
        self._lock = threading.RLock()
        self._on_free_cb = self._on_free  # one bound method for all refs, not one per storage

    @property
    def active(self) -> bool:
        """Whether the counting mode is installed (the figures are live)."""
        return self._active > 0

    @property
    def current(self) -> int:
        """Live storage bytes now (only meaningful while active)."""
        return self._current

    @property
    def peak(self) -> int:
        """Highest ``current`` since activation or the last ``reset_peak()``."""
        return self._peak

    @property
    def recording(self) -> bool:
        """Whether new storages get their frames recorded (``start_recording``)."""
        return self._recording is not None

    def reset_peak(self) -> None:
        """Start a new peak window at the current figure.

        A recording's peak is not reset: it follows the highest point since it started,
        whatever tracker blocks open and close meanwhile.
        """
        with self._lock:
            self._peak = self._current

    def start_recording(
        self, *, max_frames: int = DEFAULT_MAX_FRAMES, frame_filter: FrameFilter | None = None
    ) -> None:
        """Record, for each storage counted from now on, the frames that made it.

        Holds an activation until ``stop_recording`` (the counter forgets everything at its
        last deactivation). What is alive now, found by a scan first, counts as alive before
        recording: it has no frames.
        """
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {max_frames}")
        frame_filter = frame_filter or FrameFilter()
        self.activate()
        try:
            with self._lock:
                if self._recording is not None:
                    raise TrackerError(f"{self.device_type} storage counter is already recording")
                self.rescan()
                self._recording = _Recording(
                    frame_filter, max_frames, PeakLiveSet(self._current, len(self._refs))
                )
        except BaseException:
            self.deactivate()
            raise

    def stop_recording(self, *, top: int = DEFAULT_TOP) -> SnapshotReport:
        """Stop recording; report the ``top`` largest storages alive at the recording's peak."""
        with self._lock:
            recording = self._recording
            if recording is None:
                raise TrackerError(f"{self.device_type} storage counter is not recording")
            try:
                self._recording = None
                survivors = []
                for ref in self._refs.values():
                    if (record := _record_of(ref)) is not None:
                        survivors.append((record.birth, record))
                        ref.record = None  # the frames are not needed any more
                peaks = recording.peaks
                return SnapshotReport.from_live(
                    self.device_type,
                    peaks.peak,
                    [record.allocation() for record in peaks.at_peak(survivors)],
                    untraced_count=peaks.untraced_at_peak,
                    top=top,
                )
            finally:
                self.deactivate()

    def activate(self) -> None:
        """Install the counting mode in this thread and count what is alive (first call only).

        Raises TrackerError, counting nothing, while a thread it cannot see is alive.
        """
        with self._lock:
            if self._active == 0 and self.all_threads and (blind := threads.blind_threads()):
                names = ", ".join(repr(t.name) for t in blind)
                raise TrackerError(
                    f"exact {self.device_type} storage counting cannot see into thread(s) "
                    f"{names}: they started before pytest-sdmem was loaded or torch imported "
                    "(a thread is entered when it starts), so tensors they make would be "
                    "missed. Start them later (in a fixture or in the test), or end them "
                    "before measuring"
                )
            self._active += 1
            if self._active > 1:
                return
            try:
                # Mode first, then the scan: a tensor created in between is then seen by at
                # least one of them, and seeing it twice is harmless (one key). A thread that
                # already runs the counter's lifelong mode needs no second one.
                if self.all_threads:
                    self._listen(True)
                if not (self.all_threads and threading.current_thread() in threads.ENTERED):
                    self._mode = _CountingMode(self)
                    self._mode.__enter__()
                    self._mode_thread = threading.get_ident()
                self.rescan()
                self._peak = self._current
            except BaseException:
                self._release()
                raise

    def deactivate(self) -> None:
        """Drop one activation; the last one removes the mode and forgets every storage."""
        with self._lock:
            if self._active == 0:
                raise TrackerError(f"{self.device_type} storage counter deactivated while inactive")
            if (self._active == 1 and self._mode is not None
                    and self._mode_thread != threading.get_ident()):
                raise TrackerError(
                    f"{self.device_type} storage counting was started in another thread: "
                    "torch dispatch modes are per thread, so it must be stopped there"
                )
            self._active -= 1
            if self._active == 0:
                self._release()

    def _listen(self, on: bool) -> None:
        """Have the entered threads' modes count for this counter (or stop)."""
        global _ACTIVE
        with _ACTIVE_LOCK:
            others = tuple(c for c in _ACTIVE if c is not self)
            _ACTIVE = (*others, self) if on else others

    def _release(self) -> None:
        self._active = 0
        if self.all_threads:
            self._listen(False)
        if self._mode is not None and self._mode_thread == threading.get_ident():
            self._mode.__exit__(None, None, None)
        self._mode = None
        self._mode_thread = None
        self._recording = None
        # Dropping the weak references also drops their callbacks: nothing fires later.
        self._refs = {}
        self._current = 0
        self._peak = 0

    def rescan(self) -> None:
        """Count every live storage the garbage collector knows that is not counted yet.

        Catches what the dispatch mode cannot see: storages created before activation, or
        without a dispatched op in this thread (``torch.frombuffer``, other threads) that no
        op here has touched since.
        """
        for storage in _live_storages():
            self.see_storage(storage, scanned=True)
        with self._lock:
            self._peak = max(self._peak, self._current)

    def see(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage if it is new, update it if it grew; views add nothing.

        This runs for every tensor of every op, so the common case (a known storage of
        unchanged size) takes no lock and does a single dict lookup.
        """
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return  # sparse and other layouts without a single storage: not counted
        ref = self._refs.get(storage._cdata)
        if ref is not None and ref.nbytes == storage.nbytes():
            return
        if not self.see_storage(storage, tensor) and is_traceable_wrapper_subclass(tensor):
            # A wrapper subclass's ops run its inner ops with this mode popped, so their
            # results are only reachable here, through the wrapper.
            for name in tensor.__tensor_flatten__()[0]:
                self.see(getattr(tensor, name))

    def see_storage(
        self,
        storage: torch.UntypedStorage,
        tensor: torch.Tensor | None = None,
        *,
        scanned: bool = False,
    ) -> bool:
        """Count a storage if new, or take a change of its size into account.

        ``tensor`` (the one the storage was seen through) and ``scanned`` (found by a gc scan,
        not by an op, so the stack says nothing about it) only matter while recording.
        Returns whether the storage is one this counter counts (device type, real data).
        """
        key = storage._cdata
        nbytes = storage.nbytes()
        with self._lock:
            recording = self._recording
            ref = self._refs.get(key)
            if ref is not None and ref() is storage:
                delta = nbytes - ref.nbytes
                ref.nbytes = nbytes
                if recording is not None and delta:
                    recording.resized(ref, tensor)
            else:
                if not _counts(storage, self.device_type):
                    return False
                # A dead ref still under this key has a pending callback; it will see that
                # the key now belongs to the new ref and leave the count alone.
                delta = nbytes - (ref.nbytes if ref is not None else 0)
                if recording is None:
                    self._refs[key] = _StorageRef(storage, self._on_free_cb, key, nbytes)
                else:
                    if ref is not None:
                        recording.died(ref)
                    self._refs[key] = _RecordedRef(
                        storage, self._on_free_cb, key, nbytes,
                        recording.record(nbytes, tensor, scanned),
                    )
            current = self._current + delta
            self._current = current
            if current > self._peak:
                self._peak = current
            if recording is not None:
                recording.peaks.level(current)
        return True

    def _on_free(self, ref: _StorageRef) -> None:
        """Weakref callback: the storage's memory is being released."""
        with self._lock:
            if self._refs.get(ref.key) is ref:
                del self._refs[ref.key]
                self._current -= ref.nbytes
                if self._recording is not None:
                    self._recording.died(ref)

    def snapshot_bytes(self) -> int:
        """Bytes of the distinct live storages the garbage collector sees now (no tracking)."""
        seen: dict[int, int] = {}
        for storage in _live_storages():
            if storage._cdata not in seen and _counts(storage, self.device_type):
                seen[storage._cdata] = storage.nbytes()
        return sum(seen.values())


def _counts(storage: torch.UntypedStorage, device_type: str) -> bool:
    """Whether a storage holds memory of ``device_type``.

    The storage's own device decides, not the tensor's: a FakeTensor says "cpu" but its
    storage is on "meta". Wrapper subclasses (``_make_wrapper_subclass``) carry a placeholder
    storage whose ``data_ptr`` raises; their real memory is in the inner tensors, which are
    counted on their own.
    """
    if storage.device.type != device_type:
        return False
    try:
        storage.data_ptr()
    except RuntimeError:
        return False
    return True


def _live_storages() -> list[torch.UntypedStorage]:
    """The untyped storages of every tensor and storage object the garbage collector tracks.

    ``issubclass(type(obj), ...)`` rather than ``isinstance``: isinstance falls back to
    ``obj.__class__``, which runs arbitrary code on proxy objects.
    """
    storages = []
    for obj in gc.get_objects():
        kind = type(obj)
        if issubclass(kind, torch.Tensor):
            try:
                storages.append(obj.untyped_storage())
            except (RuntimeError, NotImplementedError):
                continue
        elif issubclass(kind, torch.UntypedStorage):
            storages.append(obj)
        elif issubclass(kind, torch.TypedStorage):
            storages.append(obj._untyped_storage)
    return storages


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
