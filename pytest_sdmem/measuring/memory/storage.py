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
import threading

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from pytest_sdmem.measuring.memory import dispatch, threads
from pytest_sdmem.measuring.memory.frames import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_TOP,
    FrameFilter,
    PeakLiveSet,
    SnapshotReport,
)
from pytest_sdmem.measuring.memory.recording import (
    RecordedRef,
    Recording,
    StorageRef,
    record_of,
)
from pytest_sdmem.measuring.memory.tracker import TrackerError


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
        self._refs: dict[int, StorageRef] = {}
        self._current = 0
        self._peak = 0
        self._active = 0
        self._mode: dispatch.CountingMode | None = None
        self._mode_thread: int | None = None
        self.all_threads = all_threads
        if all_threads:
            threads.enable()  # threads started from now on run the counting mode
        self._recording: Recording | None = None
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
                self._recording = Recording(
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
                    if (record := record_of(ref)) is not None:
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
                    dispatch.listen(self, True)
                if not (self.all_threads and threading.current_thread() in threads.ENTERED):
                    self._mode = dispatch.CountingMode(self)
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

    def _release(self) -> None:
        self._active = 0
        if self.all_threads:
            dispatch.listen(self, False)
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
                born = False
                delta = nbytes - ref.nbytes
                ref.nbytes = nbytes
                if recording is not None and delta:
                    recording.resized(ref, tensor)
            else:
                born = True
                if not _counts(storage, self.device_type):
                    return False
                # A dead ref still under this key has a pending callback; it will see that
                # the key now belongs to the new ref and leave the count alone.
                delta = nbytes - (ref.nbytes if ref is not None else 0)
                if recording is None:
                    self._refs[key] = StorageRef(storage, self._on_free_cb, key, nbytes)
                else:
                    if ref is not None:
                        recording.died(ref)
                    self._refs[key] = RecordedRef(
                        storage, self._on_free_cb, key, nbytes,
                        recording.record(nbytes, tensor, scanned),
                    )
            current = self._current + delta
            self._current = current
            if current > self._peak:
                self._peak = current
            if recording is not None:
                recording.peaks.level(current)
        if born:
            if ref is not None:  # the dead storage whose key this one took is released now
                self.on_release(key, ref.nbytes)
            self.on_count(key, nbytes, tensor)
        elif delta:
            self.on_resize(key, nbytes, tensor)
        return True

    def _on_free(self, ref: StorageRef) -> None:
        """Weakref callback: the storage's memory is being released."""
        with self._lock:
            if self._refs.get(ref.key) is not ref:
                return  # a stale callback: the key was taken by a newer storage
            del self._refs[ref.key]
            self._current -= ref.nbytes
            if self._recording is not None:
                self._recording.died(ref)
        self.on_release(ref.key, ref.nbytes)

    # The hooks below do nothing here: a subclass that follows each storage (the estimator's
    # simulated device) overrides them. They run after the figures have changed, outside the
    # counter's lock, in the thread that saw or released the storage. ``key`` identifies a
    # storage from ``on_count`` to its ``on_release``; a later storage may take the same key.

    def on_count(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        """A storage of ``nbytes`` starts being counted (``tensor``: the one it was seen
        through; None when found by a scan or handed to ``see_storage`` bare)."""

    def on_resize(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        """A counted storage changed size to ``nbytes`` (``resize_``, ``out=``)."""

    def on_release(self, key: int, nbytes: int) -> None:
        """A counted storage of ``nbytes`` was released."""

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
