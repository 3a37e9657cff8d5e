"""Host peak RSS (memory/host.py): a real buffer moves the figure, the reset and its fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_sdmem.measuring.memory import MemoryTracker, get_backend
from pytest_sdmem.measuring.memory.host import (
    HOST_RSS,
    METHOD_RESET,
    METHOD_VMHWM_LIFETIME,
    HostRssMeter,
)

MIB = 2**20

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="VmHWM needs Linux /proc"
)


def touch(nbytes: int) -> None:
    """Fault in ``nbytes`` of fresh pages (np.ones writes every byte), then free them."""
    buffer = np.ones(nbytes, dtype=np.uint8)
    del buffer


def test_peak_grows_with_a_touched_buffer_and_the_reset_brings_it_back() -> None:
    meter = HostRssMeter()
    assert meter.reset()
    assert meter.method == METHOD_RESET
    base = meter.peak()
    touch(128 * MIB)
    high = meter.peak()
    assert high - base >= 120 * MIB
    assert meter.reset()
    assert meter.peak() < high - 100 * MIB  # the freed buffer no longer counts


def test_fallback_when_clear_refs_cannot_be_written(tmp_path: Path) -> None:
    meter = HostRssMeter(clear_refs=tmp_path / "no-such-dir" / "clear_refs")
    assert not meter.reset()
    assert meter.method == METHOD_VMHWM_LIFETIME
    assert meter.peak() >= meter.current() > 0


def test_tracker_reports_the_host_peak_of_a_torch_buffer() -> None:
    with MemoryTracker(get_backend("cpu")) as m:
        rss_at_start = HOST_RSS.current()
        x = torch.ones(96 * MIB, dtype=torch.uint8)  # ones writes every page
        del x
    assert m.host_rss_method == METHOD_RESET
    assert m.host_peak_rss - rss_at_start >= 90 * MIB
    assert m.peak_delta == 96 * MIB


def test_inner_reset_does_not_hide_the_outer_host_peak() -> None:
    outer, inner = MemoryTracker(get_backend("cpu")), MemoryTracker(get_backend("cpu"))
    with outer:
        rss_at_start = HOST_RSS.current()
        touch(128 * MIB)
        with inner:
            pass
    assert outer.host_peak_rss - rss_at_start >= 120 * MIB
    assert inner.host_peak_rss < outer.host_peak_rss - 100 * MIB
