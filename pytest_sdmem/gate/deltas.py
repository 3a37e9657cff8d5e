"""One figure of one test, baseline against this run: which figures are compared, in which
direction a change is worse, and the delta judged with its metric's tolerance.

``baseline.compare_runs`` matches the tests of two runs and asks for these; a test's own verdict
(``verdicts.py``) shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pytest_sdmem.base.tables import Row
from pytest_sdmem.gate.results import TestRecord
from pytest_sdmem.gate.tolerances import FORMATTERS, Tolerance, Tolerances, format_change
from pytest_sdmem.measuring.metrics import ALLOCATED, RESERVED, Metric
from pytest_sdmem.measuring.timing import ROUND_PARTS, SINGLE_READINGS

#: "not judged": the figure's metric is off (``startup`` by default); its change is shown only.
Status = Literal["regression", "improvement", "unchanged", "not judged"]

#: The columns of a delta's table row (``MetricDelta.row``).
DELTA_COLUMNS = (
    "test",
    "model",
    "technique",
    "figure",
    "baseline",
    "this run",
    "change",
    "tolerance",
    "status",
)


class RecordKey(NamedTuple):
    """What makes two records "the same test": node id, model and technique."""

    nodeid: str
    model: str | None
    technique: str | None

    def __str__(self) -> str:
        extra = ", ".join(x for x in (self.model, self.technique) if x)
        return f"{self.nodeid} [{extra}]" if extra else self.nodeid


def record_key(record: TestRecord) -> RecordKey:
    return RecordKey(record.nodeid, record.model, record.technique)


def _number(value: float | None) -> float | None:
    """A figure of a record (checked finite when the file was read) as the float compared."""
    return None if value is None else float(value)


def _memory(metric: Metric) -> Callable[[TestRecord], float | None]:
    return lambda r: _number(metric.value(r.memory)) if r.memory else None


def _latency(name: str) -> Callable[[TestRecord], float | None]:
    return lambda r: _number(r.latency.figure(name)) if r.latency else None


@dataclass(frozen=True)
class _Figure:
    """A compared figure: its name, its tolerance metric, its direction, where it lives."""

    name: str
    metric: str
    higher_is_worse: bool
    read: Callable[[TestRecord], float | None]


FIGURES = (
    *(_Figure(metric.attribute, "vram", True, _memory(metric)) for metric in (ALLOCATED, RESERVED)),
    _Figure("latency", "latency", True, _latency("median")),
    # The breakdown of sd_pipe.latency(): each part, like the whole, is worse when slower; the
    # single readings (load, first call) under their own metric.
    *(_Figure(name, "startup", True, _latency(name)) for name in SINGLE_READINGS),
    *(_Figure(name, "latency", True, _latency(name)) for name in ROUND_PARTS),
    # A lower speed-up is the regression: the technique buys less than it did.
    _Figure("speedup", "speedup", False, lambda r: _number(r.speedup.ratio) if r.speedup else None),
)


@dataclass(frozen=True)
class MetricDelta:
    """One figure of one test, baseline against this run, judged with its metric's tolerance."""

    key: RecordKey
    figure: str
    metric: str
    base: float
    head: float
    tolerance: Tolerance
    status: Status

    @property
    def nodeid(self) -> str:
        return self.key.nodeid

    @property
    def change(self) -> float:
        return self.head - self.base

    @property
    def change_pct(self) -> float | None:
        """The change in percent of the baseline; ``None`` when the baseline figure is zero."""
        return self.change / abs(self.base) * 100 if self.base else None

    def _cells(self) -> tuple[str, str, str, str]:
        fmt = FORMATTERS[self.metric]
        pct = f"{self.change_pct:+.1f}%" if self.change_pct is not None else "n/a %"
        change = format_change(self.metric, self.change, max(abs(self.base), abs(self.head)))
        return fmt(self.head), fmt(self.base), change, pct

    @property
    def message(self) -> str:
        """One line, e.g. "peak_allocated 3.41 GB vs baseline 3.00 GB (+0.41 GB, +13.7%) ..."."""
        head, base, change, pct = self._cells()
        verdict = {
            "regression": f"exceeds tolerance {self.tolerance}",
            "improvement": f"improved beyond tolerance {self.tolerance}: refresh the baseline",
            "unchanged": f"within tolerance {self.tolerance}",
            "not judged": f"not judged: {self.metric} is off (one reading; "
                          f"--sdmem-tolerance {self.metric}=... judges it)",
        }[self.status]
        return f"{self.figure} {head} vs baseline {base} ({change}, {pct}) {verdict}"

    def row(self) -> Row:
        head, base, change, pct = self._cells()
        return Row(
            cells=(
                self.key.nodeid,
                self.key.model or "-",
                self.key.technique or "-",
                self.figure,
                base,
                head,
                f"{change} ({pct})",
                str(self.tolerance),
                self.status,
            ),
            failed=self.status == "regression",
        )


def _status(figure: _Figure, base: float, head: float, tolerance: Tolerance) -> Status:
    if not tolerance.judged:
        return "not judged"
    change = head - base
    if abs(change) <= tolerance.limit(base):
        return "unchanged"
    worse = change > 0 if figure.higher_is_worse else change < 0
    return "regression" if worse else "improvement"


def compare_figures(key: RecordKey, base: TestRecord, head: TestRecord,
                    tolerances: Tolerances) -> list[MetricDelta]:
    """Every figure two like records of the same test both hold, compared."""
    deltas = []
    for figure in FIGURES:
        b, h = figure.read(base), figure.read(head)
        if b is not None and h is not None:
            tol = tolerances[figure.metric]
            deltas.append(MetricDelta(key, figure.name, figure.metric, b, h, tol,
                                      _status(figure, b, h, tol)))
    return deltas
