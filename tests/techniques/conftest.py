"""Fixtures and collection rules of the technique suite.

The suite runs against the session's ``--sdmem-model``, of any family. A test whose claim is
about some families only (SD 1.5's budgets, one UNet step with SD 1.x's inputs, a figure of
diffusers' Flux docs) says so with ``@pytest.mark.sd_family("sd1", ...)`` and is skipped, with
the reason, in a session of another family.
"""

from __future__ import annotations

import pytest

from pytest_sdmem.measuring.memory import MemoryTracker
from pytest_sdmem.plugin.session import session_of


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sd_family(*families): the test's claim is about these model families "
        "(sd1, sd2, sdxl, sd3, flux); skipped in a session of another --sdmem-model family")


@pytest.hookimpl(trylast=True)  # after the plugin's: its skip reasons (a refused technique) first
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = session_of(config)
    settings, family = session.settings, session.model_family
    for item in items:
        if "sd_pipe" not in getattr(item, "fixturenames", ()):
            if settings.estimate:  # real generations of the tiny families, no budget
                item.add_marker(pytest.mark.skip(
                    reason="generates for real and has no budget: nothing for "
                           "--sdmem-estimate to estimate"))
            continue
        marker = item.get_closest_marker("sd_family")
        # An unreadable model (family None) is sd_pipe's error at setup, naming the model.
        if marker is not None and family is not None and family not in marker.args:
            item.add_marker(pytest.mark.skip(
                reason=f"a claim about {', '.join(marker.args)} models; this session's "
                       f"--sdmem-model {settings.model} is {family}"))


@pytest.fixture
def baseline_mem_tracker(cuda_mem_tracker: MemoryTracker) -> MemoryTracker:
    """A second tracker on the session's device, for the blocks of the baseline a technique is
    compared with.

    The test's own figure (its budget, its row in the session table and the results file) is
    the highest block of ``cuda_mem_tracker``: measuring the baseline there would make the
    classic attention's peak the row of ``sdpa``.
    """
    return MemoryTracker(cuda_mem_tracker.backend)
