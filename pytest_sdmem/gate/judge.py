"""The regression gate of one pytest run: a saved baseline, the tolerances, this run's place.

Loaded once per process (the controller and every xdist worker) so each test is judged in its
own report, where JUnit and the short summary show it; the session-wide comparison (new tests,
gone tests, improvements, tests not comparable) is made once at the end from all records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sdmem.gate.baseline import Comparison, compare_record, compare_runs, load_baseline
from pytest_sdmem.gate.deltas import MetricDelta, RecordKey, record_key
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.tolerances import Tolerances, parse_tolerances


@dataclass
class Gate:
    path: Path
    baseline: RunResults
    tolerances: Tolerances
    environment: dict[str, Any]
    #: The baseline's records by test, indexed once (its last record of a test is used, as
    #: ``compare_runs`` uses it).
    records: dict[RecordKey, TestRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.records = {record_key(r): r for r in self.baseline.results}

    @classmethod
    def load(cls, path: Path, tolerance: str | None, environment: dict[str, Any]) -> Gate:
        """Read the baseline (never written to) and the tolerances.

        Raises ``BaselineError`` or ``ToleranceError`` naming the file or the spec.
        """
        return cls(path, load_baseline(path), parse_tolerances(tolerance), environment)

    def judge(self, record: TestRecord) -> list[MetricDelta]:
        """Every figure of ``record`` compared with the baseline's record of the same test (none
        without one, or when the two must not be compared)."""
        base = self.records.get(record_key(record))
        if base is None:
            return []
        return compare_record(base, self.baseline.environment, record, self.environment,
                              self.tolerances)

    def compare(self, records: list[TestRecord]) -> Comparison:
        head = RunResults(environment=self.environment, results=records)
        return compare_runs(self.baseline, head, self.tolerances)
