"""A model of PyTorch's CUDA caching allocator: what ``torch.cuda.max_memory_allocated`` would say.

``max_memory_allocated`` is the peak of the allocator's ``allocated_bytes`` statistic, and that
statistic sums the sizes of the *blocks* handed out, not the bytes the tensors asked for
(c10/cuda/CUDACachingAllocator.cpp, ``alloc_found_block``: ``increase_stat(allocated_bytes,
block->size)``). A block is larger than its tensor in two ways, both reproduced here:

* every request is rounded up to a multiple of 512 bytes (``round_size``, ``kMinBlockSize``);
* a block taken from the cache, or a fresh segment from ``cudaMalloc``, is only split when the
  remainder is worth keeping (``should_split``): in the small pool (requests up to 1 MiB,
  packed into 2 MiB segments) when at least 512 bytes remain, in the large pool only when more
  than 1 MiB remains. An unsplit remainder stays part of the allocated block and counts. A
  12,000,000-byte weight, for instance, gets a fresh 12 MiB segment (large requests of 10 MiB
  or more are rounded up to 2 MiB), 582,912 bytes remain, less than 1 MiB, so the block, and
  ``memory_allocated``, is 12,582,912 bytes.

Which cached block a request gets (best fit: the smallest free block of its pool and stream
that fits, lowest address first), splitting, and the merging of freed neighbours decide where
those remainders arise, so the allocator's bookkeeping is simulated rather than approximated.
Segments get increasing virtual addresses. The settings are PyTorch's defaults: no
``expandable_segments``, no ``max_split_size_mb``, no ``roundup_power2_divisions``, and memory
is unlimited, so the simulation never frees its cache to retry a failed ``cudaMalloc``. Reserved
bytes (the segments) are tracked too; they are what ``memory_reserved`` would say before the
CUDA context and library workspaces, which live outside the allocator.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

#: All sizes are rounded up to a multiple of this (and at least this).
MIN_BLOCK_SIZE = 512
#: Largest request served from the small pool.
SMALL_SIZE = 1 << 20
#: Segment size of the small pool.
SMALL_BUFFER = 2 << 20
#: Segment size for large requests below MIN_LARGE_ALLOC.
LARGE_BUFFER = 20 << 20
#: From this size on, a request gets a segment of its own size, rounded to ROUND_LARGE.
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    """The block size the allocator uses for a request of ``nbytes`` (``round_size``)."""
    if nbytes < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    return -(-nbytes // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE


def segment_size(size: int) -> int:
    """The ``cudaMalloc`` size for a rounded request no cached block can serve."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False, slots=True)
class Block:
    """A contiguous piece of a segment, allocated or cached; neighbours link within a segment."""

    stream: int
    size: int
    ptr: int
    small: bool
    allocated: bool = False
    requested: int = 0
    prev: Block | None = None
    next: Block | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        """Position in the pool: the allocator's ``BlockComparatorSize`` (stream, size, ptr)."""
        return (self.stream, self.size, self.ptr)

    @property
    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class CachingAllocatorModel:
    """The allocator's pools and statistics for one device, driven by ``malloc`` and ``free``.

    ``allocated``/``peak_allocated`` mirror ``memory_allocated``/``max_memory_allocated``,
    ``reserved``/``peak_reserved`` mirror ``memory_reserved``/``max_memory_reserved``;
    ``requested`` is the exact tensor bytes behind the allocated blocks, and
    ``requested_at_peak`` its value when ``peak_allocated`` was reached (the difference is the
    rounding and the unsplit remainders).
    """

    def __init__(self) -> None:
        # Cached (free) blocks per pool, as sorted keys, and the blocks behind the keys.
        self._pools: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}
        self._cached: dict[tuple[int, int, int], Block] = {}
        self._next_ptr = 0
        self.allocated = 0
        self.peak_allocated = 0
        self.reserved = 0
        self.peak_reserved = 0
        self.requested = 0
        self.requested_at_peak = 0
        self.segments = 0

    def malloc(self, nbytes: int, stream: int = 0) -> Block | None:
        """Allocate ``nbytes`` on ``stream``; None for zero bytes, which allocate nothing."""
        if nbytes == 0:
            return None
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_cached(small, stream, size) or self._new_segment(small, stream, size)
        remaining = block.size - size
        if remaining >= MIN_BLOCK_SIZE if small else remaining > SMALL_SIZE:
            rest = Block(stream, remaining, block.ptr + size, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._cache(rest)
        block.allocated = True
        block.requested = nbytes
        self.allocated += block.size
        self.requested += nbytes
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
            self.requested_at_peak = self.requested
        return block

    def free(self, block: Block | None) -> None:
        """Return a block to its pool, merged with free neighbours (``free_block``)."""
        if block is None:
            return
        if not block.allocated:
            raise ValueError(f"block of {block.size} bytes at {block.ptr:#x} freed twice")
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        block.requested = 0
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._uncache(neighbour)
                if neighbour is block.prev:
                    block.ptr = neighbour.ptr
                    block.prev = neighbour.prev
                    if block.prev is not None:
                        block.prev.next = block
                else:
                    block.next = neighbour.next
                    if block.next is not None:
                        block.next.prev = block
                block.size += neighbour.size
        self._cache(block)

    def empty_cache(self) -> None:
        """Release every cached block that is a whole segment (``torch.cuda.empty_cache``)."""
        for keys in self._pools.values():
            for key in [k for k in keys if not self._cached[k].is_split]:
                block = self._uncache(self._cached[key])
                self.reserved -= block.size
                self.segments -= 1

    def reset_peak(self) -> None:
        """Start new peak windows at the current figures (``reset_peak_memory_stats``)."""
        self.peak_allocated = self.allocated
        self.requested_at_peak = self.requested
        self.peak_reserved = self.reserved

    def _take_cached(self, small: bool, stream: int, size: int) -> Block | None:
        keys = self._pools[small]
        i = bisect_left(keys, (stream, size, -1))
        if i == len(keys) or keys[i][0] != stream:
            return None
        return self._uncache(self._cached[keys[i]])

    def _new_segment(self, small: bool, stream: int, size: int) -> Block:
        total = segment_size(size)
        block = Block(stream, total, self._next_ptr, small)
        self._next_ptr += total
        self.reserved += total
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.segments += 1
        return block

    def _cache(self, block: Block) -> None:
        key = block.key
        self._cached[key] = block
        insort(self._pools[block.small], key)

    def _uncache(self, block: Block) -> Block:
        key = block.key
        keys = self._pools[block.small]
        del keys[bisect_left(keys, key)]
        del self._cached[key]
        return block
