"""A measured test's record, from its state: what the results file, the baseline and the
session table hold, and the JUnit properties that carry the same figures.

The record crosses pytest-xdist's wire from a worker to the controller as plain data
(``TestRecord.to_dict``); the modules that make it (``gate.results``, ``gate.sections``) are
imported inside the functions here, which run only for measured tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_sdmem.gate.settings import Settings
from pytest_sdmem.measuring.memory import MemoryReport
from pytest_sdmem.measuring.metrics import ALLOCATED, RESERVED
from pytest_sdmem.plugin.mode import Mode
from pytest_sdmem.plugin.state import TestState

if TYPE_CHECKING:
    from pytest_sdmem.gate.results import TestRecord
    from pytest_sdmem.gate.sections import GenerationSection, LatencySection


def properties(state: TestState, report: MemoryReport | None) -> list[tuple[str, Any]]:
    """The test's figures as JUnit properties (``sdmem_*``)."""
    props: list[tuple[str, Any]] = []
    if report is not None:
        props += [("sdmem_device", report.device), ("sdmem_device_name", report.device_name),
                  *((f"sdmem_{m.json_key}", m.value(report)) for m in (ALLOCATED, RESERVED)),
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


def _latency_properties(latency: LatencySection | None) -> list[tuple[str, Any]]:
    """The latency's median with its interval and its breakdown, in seconds: the figures of
    the record's latency section that are present, as ``sdmem_latency_<name>_s``."""
    if latency is None:
        return []
    from pytest_sdmem.measuring.timing import (
        BREAKDOWN_FIGURES,  # no torch: timing imports it lazily
    )

    names = ("median", "ci_low", "ci_high", *BREAKDOWN_FIGURES)
    return [(f"sdmem_latency_{name}_s", value) for name in names
            if (value := latency.figure(name)) is not None]


def latency(state: TestState) -> LatencySection | None:
    """The test pipeline's own latency: from ``sd_pipe.latency()`` if the test measured it,
    else from the test side of the min_speedup rounds."""
    from pytest_sdmem.gate.sections import LatencySection

    timing = state.sd_pipe.last_latency if state.sd_pipe is not None else None
    if timing is not None:
        return LatencySection.of(timing)
    if state.speedup is not None:
        return LatencySection.of_speedup(state.speedup)
    return None


def _generation(state: TestState, settings: Settings) -> GenerationSection | None:
    """The record's generation settings: only a test with sd_pipe has any."""
    if state.sd_pipe is None:
        return None
    from pytest_sdmem.building.runner import generation_settings  # sd_pipe imported it already
    from pytest_sdmem.gate.sections import GenerationSection

    return GenerationSection.from_dict(
        generation_settings(state.sd_pipe, settings.model, settings.safety_checker),
        "generation")


def make_record(nodeid: str, state: TestState, report: MemoryReport | None,
                mode: Mode) -> TestRecord:
    """The test's record, before its outcome and verdicts are known."""
    from pytest_sdmem.gate.results import TestRecord
    from pytest_sdmem.gate.sections import BudgetSection, MemorySection, SpeedupSection

    settings = mode.settings
    spec = state.max_vram
    return TestRecord(
        nodeid=nodeid,
        is_estimate=mode.estimated,
        estimate_details=mode.estimate_section(state),
        device=report.device if report else settings.device,
        device_name=report.device_name if report else "",
        model=settings.model if state.technique is not None else None,
        technique=state.technique,
        memory=MemorySection.of(report) if report else None,
        budget=(BudgetSection(limit=spec.limit, metric=spec.metric, key=spec.budget_key)
                if spec else None),
        latency=latency(state),
        speedup=SpeedupSection.of(state.speedup) if state.speedup else None,
        generation=_generation(state, settings),
    )
