"""A measured test's record, from its state: what the results file, the baseline and the
session table hold, and the JUnit properties that carry the same figures.

The record is plain data (``TestRecord.to_dict``) so that it crosses pytest-xdist's wire from
a worker to the controller; the modules that make it (``gate.results``, ``measuring.timing``)
are imported inside the functions here, which run only for measured tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_sdmem.gate.settings import Settings
from pytest_sdmem.measuring.memory import MemoryReport
from pytest_sdmem.plugin.mode import Mode
from pytest_sdmem.plugin.state import TestState

if TYPE_CHECKING:
    from pytest_sdmem.gate.results import TestRecord


def properties(state: TestState, report: MemoryReport | None) -> list[tuple[str, Any]]:
    """The test's figures as JUnit properties (``sdmem_*``)."""
    props: list[tuple[str, Any]] = []
    if report is not None:
        props += [("sdmem_device", report.device), ("sdmem_device_name", report.device_name),
                  ("sdmem_peak_allocated_bytes", report.peak_allocated),
                  ("sdmem_peak_reserved_bytes", report.peak_reserved),
                  ("sdmem_start_allocated_bytes", report.start_allocated)]
    if state.max_vram is not None:
        props += [("sdmem_max_vram_bytes", state.max_vram.limit),
                  ("sdmem_metric", state.max_vram.metric)]
    if state.speedup is not None:
        s = state.speedup
        props += [("sdmem_speedup", round(s.ratio, 4)), ("sdmem_speedup_ci_low", s.ci_low),
                  ("sdmem_speedup_ci_high", s.ci_high), ("sdmem_speedup_pairs", s.pairs),
                  ("sdmem_speedup_verdict", s.verdict), ("sdmem_speedup_method", s.method),
                  ("sdmem_speedup_median_test_s", s.median_test),
                  ("sdmem_speedup_median_base_s", s.median_base)]
    return props + _latency_properties(latency(state))


def _latency_properties(latency: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The latency's median with its interval and its breakdown, in seconds: the figures of
    the record's latency section that are present, as ``sdmem_latency_<name>_s``."""
    if latency is None:
        return []
    from pytest_sdmem.measuring.timing import (
        BREAKDOWN_FIGURES,  # no torch: timing imports it lazily
    )

    names = ("median", "ci_low", "ci_high", *BREAKDOWN_FIGURES)
    return [(f"sdmem_latency_{name}_s", latency[name]) for name in names
            if latency.get(name) is not None]


def latency(state: TestState) -> dict[str, Any] | None:
    """The test pipeline's own latency: from ``sd_pipe.latency()`` if the test measured it,
    else from the test side of the min_speedup rounds."""
    timing = state.sd_pipe.last_latency if state.sd_pipe is not None else None
    if timing is not None:
        return timing.to_dict()
    if state.speedup is not None:
        return {"median": state.speedup.median_test, "rounds": state.speedup.pairs,
                "source": "min_speedup"}
    return None


def _generation(state: TestState, settings: Settings) -> dict[str, Any] | None:
    """The record's generation settings: only a test with sd_pipe has any."""
    if state.sd_pipe is None:
        return None
    from pytest_sdmem.building.runner import generation_settings  # sd_pipe imported it already

    return generation_settings(state.sd_pipe, settings.model, settings.safety_checker)


def make_record(nodeid: str, state: TestState, report: MemoryReport | None,
                mode: Mode) -> TestRecord:
    """The test's record, before its outcome and verdicts are known."""
    from pytest_sdmem.gate.results import TestRecord

    settings = mode.settings
    return TestRecord(
        nodeid=nodeid,
        estimated=mode.estimated,
        estimate=mode.estimate_section(state),
        device=report.device if report else settings.device,
        device_name=report.device_name if report else "",
        model=settings.model if state.technique is not None else None,
        technique=state.technique,
        memory=report.to_dict() if report else None,
        budget=({"max_vram_bytes": state.max_vram.limit, "metric": state.max_vram.metric,
                 "key": state.max_vram.budget_key} if state.max_vram else None),
        latency=latency(state),
        speedup=state.speedup.to_dict() if state.speedup else None,
        generation=_generation(state, settings),
    )
