"""MemoryTracker on the CPU backend: exact peaks, absolute vs delta, re-entry, folding of peaks."""

from __future__ import annotations

import gc

import pytest
import torch

from pytest_sdmem.measuring.memory import (
    MemoryReport,
    MemoryTracker,
    NestedTrackerError,
    TrackerError,
    get_backend,
)
from pytest_sdmem.measuring.memory.host import describe_method

MIB = 2**20


def alloc(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


@pytest.fixture
def tracker() -> MemoryTracker:
    return MemoryTracker(get_backend("cpu"))


def test_peak_of_a_64mb_tensor_is_exact_to_the_byte(tracker: MemoryTracker) -> None:
    with tracker as m:
        x = alloc(64 * MIB)
        del x
    assert m.peak_delta == 64 * MIB
    assert m.peak_allocated == m.start_allocated + 64 * MIB
    assert m.end_allocated == m.start_allocated
    assert m.peak_reserved == m.peak_allocated  # no caching allocator on the CPU


def test_views_are_not_double_counted(tracker: MemoryTracker) -> None:
    with tracker as m:
        x = alloc(64 * MIB)
        views = [x.view(8, -1), x[::2], x.narrow(0, 0, MIB), x.view(torch.int32), x.unsqueeze(0)]
        views.append(views[0].t())
        del x, views
    assert m.peak_delta == 64 * MIB


def test_freeing_lowers_the_current_figure(tracker: MemoryTracker) -> None:
    backend = tracker.backend
    with tracker as m:
        x = alloc(16 * MIB)
        held = backend.allocated()
        view = x[1:]
        del x
        assert backend.allocated() == held  # the view keeps the storage alive
        del view
        freed = backend.allocated()
    assert held == m.start_allocated + 16 * MIB
    assert freed == m.start_allocated


def test_tensor_alive_before_the_block_counts_in_the_peak_but_not_the_delta(
    tracker: MemoryTracker,
) -> None:
    kept = alloc(32 * MIB)  # e.g. pipeline weights a fixture keeps alive
    gc.collect()
    before = tracker.backend.allocated()  # inactive: a fresh snapshot of live storages
    with tracker as m:
        y = alloc(MIB)
        del y
    assert before >= kept.nbytes
    assert m.start_allocated == before
    assert m.peak_allocated == before + MIB
    assert m.peak_delta == MIB


def test_transient_allocation_before_the_block_does_not_count(tracker: MemoryTracker) -> None:
    backend = tracker.backend
    backend.activate()  # counting already on, as under the plugin's whole-call tracker
    try:
        transient = alloc(64 * MIB)  # e.g. fixture setup building a pipeline
        del transient
        assert backend.peak_allocated() >= backend.allocated() + 64 * MIB
        with tracker as m:
            y = alloc(MIB)
            del y
    finally:
        backend.deactivate()
    assert m.peak_delta == MIB


def test_nesting_the_same_tracker_is_an_error_and_leaves_the_block_intact(
    tracker: MemoryTracker,
) -> None:
    with tracker as m:
        x = alloc(2 * MIB)
        with pytest.raises(NestedTrackerError, match="already measuring a block"):
            with tracker:
                pass
        del x
    assert m.peak_delta == 2 * MIB
    assert len(m.reports) == 1


def test_outer_peak_survives_the_reset_made_for_an_inner_tracker() -> None:
    outer, inner = MemoryTracker(get_backend("cpu")), MemoryTracker(get_backend("cpu"))
    with outer:
        before = alloc(32 * MIB)
        del before
        with inner:
            x = alloc(16 * MIB)
            del x
        after = alloc(8 * MIB)
        del after
    assert outer.peak_delta == 32 * MIB
    assert inner.peak_delta == 16 * MIB


def test_inner_peak_reaches_the_outer_tracker() -> None:
    outer, inner = MemoryTracker(get_backend("cpu")), MemoryTracker(get_backend("cpu"))
    with outer:
        with inner:
            x = alloc(64 * MIB)
            del x
    assert inner.peak_delta == 64 * MIB
    assert outer.peak_delta == 64 * MIB


def test_overlapping_not_nested_trackers_both_see_their_peaks() -> None:
    first, second = MemoryTracker(get_backend("cpu")), MemoryTracker(get_backend("cpu"))
    first.start()
    a = alloc(8 * MIB)
    second.start()
    b = alloc(4 * MIB)
    first.stop()
    del a
    c = alloc(32 * MIB)
    second.stop()
    del b, c
    assert first.peak_delta == 12 * MIB  # a + b, although second reset the peak in between
    assert second.peak_delta == 28 * MIB  # b + c over a start that held a (freed since)


def test_reentering_gives_a_new_report(tracker: MemoryTracker) -> None:
    for size in (MIB, 3 * MIB):
        with tracker:
            x = alloc(size)
            del x
    assert [r.peak_delta for r in tracker.reports] == [MIB, 3 * MIB]
    assert tracker.peak_delta == 3 * MIB
    assert tracker.last_report is tracker.reports[-1]


def test_explicit_start_stop_and_error_messages(tracker: MemoryTracker) -> None:
    with pytest.raises(TrackerError, match="no block measured yet"):
        _ = tracker.peak_allocated
    with pytest.raises(TrackerError, match="stopped without being started"):
        tracker.stop()
    tracker.start()
    x = alloc(MIB)
    report = tracker.stop()
    del x
    assert report is tracker.last_report
    assert report.peak_delta == MIB
    assert report.end_allocated == report.start_allocated + MIB


def test_block_that_raises_still_records_its_report(tracker: MemoryTracker) -> None:
    with pytest.raises(ZeroDivisionError):
        with tracker:
            x = alloc(2 * MIB)
            del x
            _ = 1 / 0
    assert tracker.peak_delta == 2 * MIB
    assert not tracker.measuring
    assert not get_backend("cpu").counter.active


def test_report_text_dict_and_merge() -> None:
    with MemoryTracker(get_backend("cpu")) as m:
        x = alloc(64 * 10**6)
        del x
    text = str(m)
    assert text.startswith("cpu (")
    assert "(+64.00 MB over" in text
    assert f"({describe_method(m.host_rss_method)})" in text
    assert "vmhwm" not in text  # the code stays in the JSON, the text says what it means
    data = m.last_report.to_dict()
    assert data["peak_delta_bytes"] == 64 * 10**6
    assert data["peak_allocated_bytes"] - data["start_allocated_bytes"] == 64 * 10**6
    assert set(data) == {
        "peak_allocated_bytes", "peak_reserved_bytes", "start_allocated_bytes",
        "end_allocated_bytes", "peak_delta_bytes", "host_peak_rss_bytes", "host_rss_method",
        "process_peak_bytes", "num_alloc_retries", "num_ooms",
    }  # fmt: skip

    def report(peak: int, start: int, reserved: int, host: int | None) -> MemoryReport:
        return MemoryReport("cuda:0", "GPU", peak, reserved, start, start, host, "m", None, 1, 0)

    merged = MemoryReport.merge_max([report(10, 4, 50, None), report(30, 25, 40, 7)])
    assert (merged.peak_allocated, merged.peak_delta, merged.peak_reserved) == (30, 5, 50)
    assert (merged.host_peak_rss, merged.process_peak, merged.num_alloc_retries) == (7, None, 2)
    with pytest.raises(ValueError, match="at least one"):
        MemoryReport.merge_max([])
