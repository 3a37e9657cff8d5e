"""The CUDA caching allocator model and the simulated device, against figures computed by hand.

Every expected number below is derived in the comments from the allocator's rules
(c10/cuda/CUDACachingAllocator.cpp): 512-byte rounding; requests up to 1 MiB from 2 MiB
small-pool segments, split when 512 bytes or more remain; larger requests from 20 MiB segments
below 10 MiB, else from a segment of their own size rounded up to 2 MiB, split only when more
than 1 MiB remains; best fit among cached blocks of the same stream.
"""

from __future__ import annotations

import torch

from pytest_sdmem.estimate.allocator import (
    LARGE_BUFFER,
    SMALL_BUFFER,
    CachingAllocatorModel,
    round_size,
    segment_size,
)
from pytest_sdmem.estimate.device import SimulatedDevice

MIB = 2**20


def test_sizes_round_up_to_512_bytes() -> None:
    assert [round_size(n) for n in (1, 511, 512, 513, 1000, 1024)] == [512, 512, 512, 1024,
                                                                       1024, 1024]
    assert segment_size(512) == SMALL_BUFFER
    assert segment_size(MIB + 512) == LARGE_BUFFER
    assert segment_size(12_000_256) == 12 * MIB  # 11.44 MiB rounded up to 2 MiB steps


def test_small_requests_share_a_small_segment() -> None:
    allocator = CachingAllocatorModel()
    a = allocator.malloc(100)  # 512-byte block
    b = allocator.malloc(1000)  # 1024-byte block, split from the same 2 MiB segment
    assert (allocator.allocated, allocator.reserved, allocator.segments) == (1536, SMALL_BUFFER, 1)
    assert allocator.requested == 1100
    allocator.free(a)
    assert allocator.allocated == 1024
    allocator.free(b)
    assert (allocator.allocated, allocator.reserved) == (0, SMALL_BUFFER)
    assert allocator.malloc(0) is None and allocator.allocated == 0


def test_a_large_remainder_of_one_mib_or_less_stays_in_the_block() -> None:
    allocator = CachingAllocatorModel()
    # 12,000,000 B rounds to 12,000,256; its segment is 12 MiB; 582,656 B remain, not more
    # than 1 MiB, so the block is not split and counts 12 MiB.
    allocator.malloc(12_000_000)
    assert allocator.allocated == 12 * MIB
    assert allocator.requested_at_peak == 12_000_000
    # 19 MiB gets a 20 MiB segment and exactly 1 MiB remains: still not split.
    allocator.malloc(19 * MIB)
    assert allocator.allocated == 12 * MIB + 20 * MIB
    # 1.5 MiB gets a 20 MiB segment; 18.5 MiB remain, more than 1 MiB: split.
    allocator.malloc(3 * MIB // 2)
    assert allocator.allocated == 32 * MIB + 3 * MIB // 2
    assert allocator.reserved == 12 * MIB + 20 * MIB + 20 * MIB


def test_cached_blocks_are_reused_best_fit_and_merged_when_freed() -> None:
    allocator = CachingAllocatorModel()
    a = allocator.malloc(2 * MIB)
    b = allocator.malloc(2 * MIB)  # the same 20 MiB segment: a | b | 16 MiB free
    assert allocator.segments == 1
    allocator.free(a)
    allocator.free(b)  # merged with a and with the free rest: one free 20 MiB block again
    # 19.5 MiB fits the merged block; 0.5 MiB remains, so the whole 20 MiB is allocated and no
    # second segment is needed.
    c = allocator.malloc(39 * MIB // 2)
    assert (allocator.allocated, allocator.segments) == (20 * MIB, 1)
    allocator.free(c)
    # Best fit: with a 3 MiB hole and the 20 MiB rest free, 2 MiB goes into the hole.
    d = allocator.malloc(3 * MIB)
    allocator.malloc(4 * MIB)
    allocator.free(d)
    e = allocator.malloc(2 * MIB)
    assert e is not None and e.ptr == d.ptr


def test_streams_do_not_share_cached_blocks_and_empty_cache_releases_free_segments() -> None:
    allocator = CachingAllocatorModel()
    allocator.free(allocator.malloc(4096, stream=1))
    allocator.malloc(4096, stream=0)  # cannot use stream 1's cached segment
    assert allocator.segments == 2
    allocator.empty_cache()  # stream 1's segment is wholly free; stream 0's is in use
    assert (allocator.segments, allocator.reserved) == (1, SMALL_BUFFER)
    assert allocator.peak_reserved == 2 * SMALL_BUFFER


def test_peaks_reset_to_the_current_figures() -> None:
    allocator = CachingAllocatorModel()
    a = allocator.malloc(4096)
    allocator.free(allocator.malloc(8192))
    assert allocator.peak_allocated == 4096 + 8192
    allocator.reset_peak()
    assert allocator.peak_allocated == 4096
    allocator.free(a)
    assert allocator.peak_allocated == 4096


def test_linear_layer_to_the_byte() -> None:
    layer = torch.nn.Linear(1000, 3000, device="meta")  # float32
    with SimulatedDevice() as device, torch.no_grad():
        device.place(layer.parameters())
        # weight 12,000,000 B: unsplit 12 MiB block; bias 12,000 B -> 12,288
        assert device.allocated == 12 * MIB + 12_288
        x = torch.empty(8, 1000, device="meta")  # 32,000 B -> 32,256
        y = layer(x)  # 8 x 3000 x 4 = 96,000 B -> 96,256
        assert device.allocator.peak_allocated == 12 * MIB + 12_288 + 32_256 + 96_256
        assert device.allocator.requested_at_peak == 12_000_000 + 12_000 + 32_000 + 96_000
        assert device.allocator.reserved == 12 * MIB + SMALL_BUFFER
        del y
        assert device.allocated == 12 * MIB + 12_288 + 32_256


def test_conv_stack_to_the_byte() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, padding=1),
    ).to(device="meta", dtype=torch.float16)
    with SimulatedDevice() as device, torch.no_grad():  # inference: autograd keeps nothing
        device.place(net.parameters())
        # weights 16*3*9*2 = 864 -> 1024, bias 32 -> 512, 8*16*9*2 = 2304 -> 2560, bias 16 -> 512
        weights = 1024 + 512 + 2560 + 512
        assert device.allocated == weights
        x = torch.empty(2, 3, 64, 64, device="meta", dtype=torch.float16)  # 49,152 B
        y = net(x)
        # The first conv's output (2*16*64*64*2 = 262,144 B) is alive while ReLU makes its own
        # (262,144 B); the second conv's output (131,072 B) comes after the first is freed.
        assert device.allocator.peak_allocated == weights + 49_152 + 2 * 262_144
        assert device.allocated == weights + 49_152 + 131_072
        assert device.allocator.reserved == SMALL_BUFFER  # all of it in one small segment
        del y


def test_storages_from_before_activation_and_host_tensors_are_not_on_the_device() -> None:
    outside = torch.empty(1000, device="meta")
    on_host = torch.empty(1000, device="meta")
    with SimulatedDevice() as device:
        device.keep_on_host([on_host])
        _ = on_host + 0  # reading the host tensor does not place it; the result is new
        assert device.allocated == 4096
        device.place([outside, outside.view(10, 100)])  # one storage, placed once
        assert device.allocated == 4096 + 4096
        block = device.copy_in(on_host)  # an explicit device copy of the host tensor
        assert device.allocated == 3 * 4096
        device.release(block)
        assert device.allocated == 2 * 4096


def test_a_device_tensor_at_a_dead_host_tensors_address_is_counted() -> None:
    """A storage is known by its address, and the heap gives freed addresses to new storages:
    a host tensor's address, remembered after it died, once made a device tensor born there
    invisible (estimates a block or two low, by the luck of the heap)."""
    with SimulatedDevice() as device:
        with device.on_host():  # e.g. decoded images read back
            host = [torch.empty(4096, device="meta") for _ in range(200)]
        dead = {t.untyped_storage()._cdata for t in host}
        del host
        before = device.allocated
        on_device = [torch.empty(4096, device="meta") for _ in range(200)]
        reborn = [t for t in on_device if t.untyped_storage()._cdata in dead]
        assert reborn, "the heap gave no freed address again: nothing was shown"
        assert not any(device.is_on_host(t) for t in reborn)
        assert device.allocated == before + 200 * 16384  # every one counted


def test_a_resized_storage_is_reallocated_and_phase_peaks_follow_the_phase() -> None:
    with SimulatedDevice() as device:
        device.set_phase("first")
        x = torch.empty(256, device="meta")  # 1024 B
        device.set_phase("second")
        x.resize_(4096)  # 16,384 B: allocated before the old block is freed
        assert device.allocated == 16_384
        assert device.phase_peaks == {"first": 1024, "second": 1024 + 16_384}
        del x
        assert device.allocated == 0
