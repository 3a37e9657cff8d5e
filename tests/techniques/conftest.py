"""Fixtures of the technique suite."""

from __future__ import annotations

import pytest

from pytest_sdmem.measuring.memory import MemoryTracker


@pytest.fixture
def baseline_mem_tracker(cuda_mem_tracker: MemoryTracker) -> MemoryTracker:
    """A second tracker on the session's device, for the blocks of the baseline a technique is
    compared with.

    The test's own figure (its budget, its row in the session table and the results file) is
    the highest block of ``cuda_mem_tracker``: measuring the baseline there would make the
    classic attention's peak the row of ``sdpa``.
    """
    return MemoryTracker(cuda_mem_tracker.backend)
