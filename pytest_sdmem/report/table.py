"""The one table every report shows: a row per measured test, in human units.

Terminal, markdown and HTML reports all render these rows, so the figures a person reads in the
job summary are the same strings they read in the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pytest_sdmem.base.tables import Row, text_table
from pytest_sdmem.base.units import format_duration, format_size
from pytest_sdmem.gate.results import TestRecord

COLUMNS = (
    "test",
    "technique",
    "device",
    "latency",
    "per step",
    "speed-up",
    "peak allocated",
    "peak reserved",
    "budget",
    "verdict",
)


def _duration_cell(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "-"


def _budget_cell(record: TestRecord) -> str:
    if not record.budget:
        return "-"
    return f"{format_size(record.budget['max_vram_bytes'])} ({record.budget['metric']})"


def _speedup_cell(record: TestRecord) -> str:
    """The speed-up and its interval; a measurement stopped before it had the pairs for an
    interval (an inconclusive verdict) has none, and the cell says so instead of inventing one."""
    if not record.speedup:
        return "-"
    s = record.speedup
    if s.get("ci_low") is None or s.get("ci_high") is None:
        pairs = f": {s['pairs']} pairs" if s.get("pairs") else ""
        return f"{s['ratio']:.2f}x [no interval{pairs}]"
    return f"{s['ratio']:.2f}x [{s['ci_low']:.2f}-{s['ci_high']:.2f}]"


def _verdict_cell(record: TestRecord) -> str:
    failed = [v["kind"] for v in record.verdicts if not v.get("passed", True)]
    verdict = "FAIL " + ",".join(failed) if failed else record.outcome
    return f"{verdict} (estimated)" if record.estimated and record.outcome != "skipped" else verdict


def _reserved_cell(reserved: int | None, estimate: dict[str, Any] | None) -> str:
    """Reserved memory; an estimate's shows the calibrated overhead it includes beside it."""
    if reserved is None:
        return "-"
    extra = ((estimate or {}).get("overhead") or {}).get("reserved_bytes")
    if extra:
        return f"{format_size(reserved)} (incl. +{format_size(extra)} overhead)"
    return format_size(reserved)


def table_rows(records: Iterable[TestRecord]) -> list[Row]:
    """Rows for every record, in the order the tests ran."""
    rows = []
    for r in records:
        mem = r.memory or {}
        estimated = " (est.)" if r.estimated else ""
        peak = mem.get("peak_allocated_bytes")
        reserved = mem.get("peak_reserved_bytes")
        latency = r.latency or {}
        rows.append(
            Row(
                cells=(
                    r.nodeid,
                    r.technique or "-",
                    r.device,
                    _duration_cell(latency.get("median")),
                    _duration_cell(latency.get("per_step")),
                    _speedup_cell(r),
                    (format_size(peak) + estimated) if peak is not None else "-",
                    _reserved_cell(reserved, r.estimate),
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


# The memory figure a budget's ``metric`` is judged on, so a chart draws the bar the budget
# line is about (a "reserved" budget over an "allocated" bar would mislead).
_BUDGET_FIGURES = {
    "allocated": "peak_allocated_bytes",
    "reserved": "peak_reserved_bytes",
    "process": "process_peak_bytes",
}


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
    """Peak memory per test (the figure its budget's metric names), with the budget as limit."""
    bars = []
    for r in records:
        budget = r.budget or {}
        figure = _BUDGET_FIGURES.get(budget.get("metric", "allocated"), "peak_allocated_bytes")
        value = (r.memory or {}).get(figure)
        if value is not None:
            bars.append(Bar(_bar_label(r), value, budget.get("max_vram_bytes")))
    return bars


def latency_bars(records: Iterable[TestRecord]) -> list[Bar]:
    """Median latency per test, for the tests that measured one."""
    return [
        Bar(_bar_label(r), r.latency["median"])
        for r in records
        if r.latency and r.latency.get("median") is not None
    ]
