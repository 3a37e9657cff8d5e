"""The regression gate of one pytest run: a saved baseline, the tolerances, this run's place.

Loaded once per process (the controller and every xdist worker) so each test is judged in its
own report, where JUnit and the short summary show it; the session-wide comparison (new tests,
gone tests, improvements, tests not comparable) is made once at the end from all records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sdmem.gate.baseline import Comparison, MetricDelta, compare_runs, load_baseline
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.tolerances import Tolerances, parse_tolerances


@dataclass
class Gate:
    path: Path
    baseline: RunResults
    tolerances: Tolerances
    environment: dict[str, Any]

    @classmethod
    def load(cls, path: Path, tolerance: str | None, environment: dict[str, Any]) -> Gate:
        """Read the baseline (never written to) and the tolerances.

        Raises ``BaselineError`` or ``ToleranceError`` naming the file or the spec.
        """
        return cls(path, load_baseline(path), parse_tolerances(tolerance), environment)

    def judge(self, record: TestRecord) -> list[MetricDelta]:
        """Every figure of ``record`` compared with the baseline's record of the same test."""
        head = RunResults(environment=self.environment, results=[record])
        return compare_runs(self.baseline, head, self.tolerances).for_nodeid(record.nodeid)

    def compare(self, records: list[TestRecord]) -> Comparison:
        head = RunResults(environment=self.environment, results=records)
        return compare_runs(self.baseline, head, self.tolerances)
