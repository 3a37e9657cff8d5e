"""The one table every report shows: a row per measured test, in human units.

Terminal, markdown and HTML reports all render these rows, so the figures a person reads in the
job summary are the same strings they read in the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pytest_sdmem.base.tables import Row, text_table
from pytest_sdmem.base.units import format_duration, format_size
from pytest_sdmem.gate.results import TestRecord
from pytest_sdmem.gate.sections import EstimateSection
from pytest_sdmem.measuring.metrics import ALLOCATED, DEFAULT_METRIC, METRICS, RESERVED

COLUMNS = (
    "test",
    "technique",
    "device",
    "latency",
    "per step",
    "speed-up",
    ALLOCATED.label,
    RESERVED.label,
    "budget",
    "verdict",
)


def _duration_cell(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "-"


def _budget_cell(record: TestRecord) -> str:
    if not record.budget or record.budget.limit is None:
        return "-"
    return f"{format_size(record.budget.limit)} ({record.budget.metric})"


def _speedup_cell(record: TestRecord) -> str:
    """The speed-up and its interval; a measurement stopped before it had the pairs for an
    interval (an inconclusive verdict) has none, and the cell says so instead of inventing one."""
    if not record.speedup:
        return "-"
    s = record.speedup
    if s.ci_low is None or s.ci_high is None:
        pairs = f": {s.pairs} pairs" if s.pairs else ""
        return f"{s.ratio:.2f}x [no interval{pairs}]"
    return f"{s.ratio:.2f}x [{s.ci_low:.2f}-{s.ci_high:.2f}]"


def _verdict_cell(record: TestRecord) -> str:
    failed = [v.kind for v in record.verdicts if v.passed is False]
    verdict = "FAIL " + ",".join(failed) if failed else record.outcome
    return (f"{verdict} (estimated)" if record.is_estimate and record.outcome != "skipped"
            else verdict)


def _reserved_cell(reserved: int | None, estimate: EstimateSection | None) -> str:
    """Reserved memory; an estimate's shows the calibrated overhead it includes beside it."""
    if reserved is None:
        return "-"
    extra = estimate.applied_reserved if estimate is not None else 0
    if extra:
        return f"{format_size(reserved)} (incl. +{format_size(extra)} overhead)"
    return format_size(reserved)


def table_rows(records: Iterable[TestRecord]) -> list[Row]:
    """Rows for every record, in the order the tests ran."""
    rows = []
    for r in records:
        estimated = " (est.)" if r.is_estimate else ""
        peak = ALLOCATED.value(r.memory) if r.memory else None
        reserved = RESERVED.value(r.memory) if r.memory else None
        latency = r.latency
        rows.append(
            Row(
                cells=(
                    r.nodeid,
                    r.technique or "-",
                    r.device,
                    _duration_cell(latency.figure("median") if latency else None),
                    _duration_cell(latency.figure("per_step") if latency else None),
                    _speedup_cell(r),
                    (format_size(peak) + estimated) if peak is not None else "-",
                    _reserved_cell(reserved, r.estimate_details),
                    _budget_cell(r),
                    _verdict_cell(r),
                ),
                failed=r.outcome == "failed",
            )
        )
    return rows


def render_text(rows: list[Row], columns: tuple[str, ...] = COLUMNS,
                width: int | None = None) -> list[str]:
    """The run's table as plain aligned lines for the terminal summary (``text_table`` with the
    run's columns), at most ``width`` characters each."""
    return text_table(rows, columns, width)


@dataclass(frozen=True)
class Bar:
    """One bar of a report chart: a test's figure and, for memory, the budget it is held to."""

    label: str
    value: float
    limit: float | None = None

    @property
    def over(self) -> bool:
        return self.limit is not None and self.value > self.limit


def _bar_label(record: TestRecord) -> str:
    return f"{record.nodeid} ({record.technique})" if record.technique else record.nodeid


def memory_bars(records: Iterable[TestRecord]) -> list[Bar]:
    """Peak memory per test (the figure its budget's metric names, so a chart draws the bar
    the budget line is about: a "reserved" budget over an "allocated" bar would mislead),
    with the budget as limit."""
    bars = []
    for r in records:
        metric = METRICS.get(r.budget.metric or "", DEFAULT_METRIC) if r.budget else DEFAULT_METRIC
        value = metric.value(r.memory) if r.memory else None
        if value is not None:
            bars.append(Bar(_bar_label(r), value, r.budget.limit if r.budget else None))
    return bars


def latency_bars(records: Iterable[TestRecord]) -> list[Bar]:
    """Median latency per test, for the tests that measured one."""
    return [
        Bar(_bar_label(r), median)
        for r in records
        if r.latency and (median := r.latency.figure("median")) is not None
    ]
