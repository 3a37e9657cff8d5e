"""The simulated GPU of an estimate: meta tensor storages become blocks of the allocator model.

Code run on the meta device creates and frees storages exactly where it would on CUDA (the same
Python and the same aten ops, minus the data), so the core's exact storage accounting
(``memory.storage.StorageCounter`` on "meta") sees every allocation and every release in order.
A subclass reports each of those events to a ``CachingAllocatorModel`` instead of only adding
up bytes. Two kinds of storage are not on the simulated GPU:

* anything that existed before the device was activated: the counter starts empty instead of
  scanning the process, because the pipeline's weights are put on the device by the placement
  policy (``place``), in the order a ``.to("cuda")`` would allocate them, and unrelated meta
  tensors elsewhere in the process are on no GPU;
* storages declared host-resident (``keep_on_host``): an offloaded model's weights live on the
  CPU; a placement policy accounts for their temporary GPU copies with ``copy_in``/``release``.
  A storage is known by its address, which a new storage may take once the old one is freed:
  each host storage is forgotten when it dies (a weak reference's callback), or a device
  tensor born at its address later would be taken for a host one and not counted.

Phases name the model that ran last, so that a report can say where the peak was reached;
each new high of the allocated figure also takes a ``PeakPlace`` (module, function, largest
live blocks: see ``peak``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pytest_sdmem.estimate.allocator import Block, CachingAllocatorModel
from pytest_sdmem.estimate.peak import PeakPlace, describe_tensor, largest
from pytest_sdmem.measuring.memory.recording import StorageRef
from pytest_sdmem.measuring.memory.storage import StorageCounter

#: The phase before any model has run (and the name for work outside the models).
PIPELINE_PHASE = "pipeline"


class _StorageEvents(StorageCounter):
    """A meta ``StorageCounter`` that tells its device when a storage is born, grows or dies
    (the counter's ``on_count``/``on_resize``/``on_release`` hooks), keyed by storage key."""

    def __init__(self, device: SimulatedDevice) -> None:
        super().__init__("meta")
        self._device = device

    def rescan(self) -> None:
        """Start empty: what exists before activation is placed explicitly, or is not on the GPU."""

    def see_storage(self, storage: torch.UntypedStorage, tensor: torch.Tensor | None = None,
                    **kwargs: Any) -> bool:
        if self._device.born_on_host:
            self._device.to_host(storage)
        if self._device.holds_on_host(storage):
            return True
        return super().see_storage(storage, tensor, **kwargs)

    def on_count(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        self._device.storage_born(key, nbytes, tensor)

    def on_resize(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        # CUDA allocates the new size, then frees the old
        self._device.storage_resized(key, nbytes, tensor)

    def on_release(self, key: int, nbytes: int) -> None:
        self._device.storage_freed(key)


class SimulatedDevice:
    """One simulated CUDA device: use as ``with SimulatedDevice() as device: ...``.

    While active, every meta storage created in this thread is an allocation of the model
    allocator (``allocator``), freed when the storage is released. ``phase_peaks`` holds the
    highest allocated figure reached in each phase, ``peak_place`` where the overall peak was
    (module and function from ``where``, set by the caller, e.g. to a ``Locator``'s).
    """

    def __init__(self) -> None:
        self.allocator = CachingAllocatorModel()
        #: The host-resident storages alive, by address (``to_host``).
        self.host_keys: dict[int, StorageRef] = {}
        #: While set, storages born are host-resident (see ``on_host``).
        self.born_on_host = False
        self.phase = PIPELINE_PHASE
        self.phase_peaks: dict[str, int] = {}
        self.peak_place: PeakPlace | None = None
        self.where: Callable[[], tuple[str, str]] = lambda: (PIPELINE_PHASE, "-")
        self._blocks: dict[int, Block | None] = {}
        #: Every allocated block and what it holds (tensor, where made); None for a weight.
        self._live: dict[int, tuple[Block, tuple[str, str] | None]] = {}
        self._weights = 0
        self._placing = False
        self._events = _StorageEvents(self)

    @property
    def allocated(self) -> int:
        return self.allocator.allocated

    def __enter__(self) -> SimulatedDevice:
        self._events.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._events.deactivate()

    def place(self, tensors: Iterable[torch.Tensor]) -> None:
        """Allocate tensors that already exist (weights), in the given order, as a ``.to``
        would; a storage seen before is not allocated again."""
        self._placing = True
        try:
            for tensor in tensors:
                self._events.see_storage(tensor.untyped_storage(), None)
        finally:
            self._placing = False

    def keep_on_host(self, tensors: Iterable[torch.Tensor]) -> None:
        """Declare tensors to live on the CPU: their storages never count on the device."""
        for tensor in tensors:
            self.to_host(tensor.untyped_storage())

    def to_host(self, storage: torch.UntypedStorage) -> None:
        """Mark ``storage`` host-resident for as long as it lives: its entry is dropped when it
        dies, and until then an entry counts only for the storage it refers to (another storage
        at the same address is not host-resident for it). The counter's own references
        (``StorageRef``), with one callback for all of them."""
        if not self.holds_on_host(storage):
            key = storage._cdata
            self.host_keys[key] = StorageRef(storage, self._forget_host, key, 0)

    def _forget_host(self, dead: StorageRef) -> None:
        if self.host_keys.get(dead.key) is dead:
            del self.host_keys[dead.key]

    def is_on_host(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s storage lives on the CPU (``keep_on_host``)."""
        return self.holds_on_host(tensor.untyped_storage())

    def holds_on_host(self, storage: torch.UntypedStorage) -> bool:
        """Whether ``storage`` itself (not a dead one at its address) is host-resident."""
        host = self.host_keys.get(storage._cdata)
        return host is not None and host() is storage

    @contextmanager
    def on_host(self) -> Iterator[None]:
        """Storages born inside are on the CPU: the result of converting a host tensor
        (an offloaded model's ``.to(dtype)`` runs on the CPU)."""
        before, self.born_on_host = self.born_on_host, True
        try:
            yield
        finally:
            self.born_on_host = before

    def copy_in(self, tensor: torch.Tensor, stream: int = 0) -> Block | None:
        """Allocate the device copy of a host tensor (``tensor.to("cuda")``: dense, its own
        storage, on the current ``stream``); a weight."""
        return self._malloc(tensor.numel() * tensor.element_size(), stream, None)

    def release(self, block: Block | None) -> None:
        """Free a block from ``copy_in`` (the device copy is dropped)."""
        self.free(block)

    def allocate(self, nbytes: int, what: str) -> Block | None:
        """A block no tensor of the meta run holds (a library's workspace), described as
        ``what``; give it back with ``free``."""
        return self._malloc(nbytes, 0, (what, self._here()))

    def free(self, block: Block | None) -> None:
        """Free a block from ``allocate``, ``copy_in`` or a storage."""
        if block is None:
            return
        entry = self._live.pop(id(block), None)
        if entry is not None and entry[1] is None:  # a weight
            self._weights -= block.size
        self.allocator.free(block)

    def empty_cache(self) -> None:
        """What ``torch.cuda.empty_cache()`` does where the real code calls it."""
        self.allocator.empty_cache()

    def set_phase(self, name: str) -> None:
        """From now on, allocations belong to phase ``name``. A phase's peak is the highest
        figure an allocation of the phase reached: what the previous model left on the device
        and the next one releases before allocating is the previous phase's."""
        self.phase = name

    def reset_peak(self) -> None:
        """Start the peak windows here, as ``torch.cuda.reset_peak_memory_stats()`` would."""
        self.allocator.reset_peak()
        self.phase_peaks = {}
        self._note_peak()
        self._take_peak_place()

    def storage_born(self, ident: int, nbytes: int, tensor: torch.Tensor | None = None) -> None:
        self._blocks[ident] = self._malloc(nbytes, 0, self._label(tensor))

    def storage_resized(self, ident: int, nbytes: int, tensor: torch.Tensor | None = None) -> None:
        old = self._blocks.get(ident)
        self._blocks[ident] = self._malloc(nbytes, 0, self._label(tensor))
        self.free(old)

    def storage_freed(self, ident: int) -> None:
        self.free(self._blocks.pop(ident, None))

    def _here(self) -> str:
        module, op = self.where()
        return module if op == "-" else f"{module} ({op})"

    def _label(self, tensor: torch.Tensor | None) -> tuple[str, str] | None:
        return None if self._placing else (describe_tensor(tensor), self._here())

    def _malloc(self, nbytes: int, stream: int, label: tuple[str, str] | None) -> Block | None:
        peak = self.allocator.peak_allocated
        block = self.allocator.malloc(nbytes, stream)
        if block is None:
            return None
        self._live[id(block)] = (block, label)
        if label is None:
            self._weights += block.size
        self._note_peak()
        if self.allocator.peak_allocated > peak:
            self._take_peak_place()
        return block

    def _take_peak_place(self) -> None:
        module, op = self.where()
        live = [(block.size, *label) for block, label in self._live.values() if label is not None]
        self.peak_place = PeakPlace(self.allocator.allocated, self.phase, module, op,
                                    self._weights, largest(live))

    def _note_peak(self) -> None:
        allocated = self.allocator.allocated
        if allocated > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = allocated
