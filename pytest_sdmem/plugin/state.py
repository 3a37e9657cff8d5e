"""What the pytest glue remembers between hooks: each test's state, and the collected records
(on the controller, records from every xdist worker arrive here too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_sdmem.gate.markers import (
    MarkerError,
    MaxVram,
    MinSpeedup,
    one_value,
    parse_sd_technique,
)
from pytest_sdmem.measuring.memory import MemoryReport, MemoryTracker

if TYPE_CHECKING:
    from pytest_sdmem.building.runner import SdPipe
    from pytest_sdmem.estimate.pipe import EstimatedSdPipe
    from pytest_sdmem.gate.results import TestRecord
    from pytest_sdmem.measuring.memory.snapshot import SnapshotRecorder, SnapshotReport
    from pytest_sdmem.measuring.speedup import SpeedupResult


@dataclass
class TestState:
    """One test's markers (parsed at collection) and what was measured while it ran."""

    __test__ = False

    max_vram: MaxVram | None = None
    min_speedup: MinSpeedup | None = None
    technique: str | None = None
    error: str | None = None
    measured: bool = False
    allocated_before: int | None = None
    call_report: MemoryReport | None = None
    trackers: list[MemoryTracker] = field(default_factory=list)
    sd_pipe: SdPipe | EstimatedSdPipe | None = None
    speedup: SpeedupResult | None = None
    leak_bytes: int | None = None
    recorder: SnapshotRecorder | None = None
    snapshot: SnapshotReport | None = None

    def stop_recording(self, nodeid: str, directory: Path | None,
                       budget_failed: bool) -> SnapshotReport | None:
        """Stop the test's allocation recording; on a budget failure, keep what it saw.

        CUDA writes a snapshot file for pytorch.org/memory_viz; on the CPU the report (largest
        live tensors at the peak, with the frames that made them) is saved as JSON beside it,
        so CI uploads the same kind of artifact from both tiers.
        """
        recorder, self.recorder = self.recorder, None
        if recorder is None or directory is None:
            return None
        report = recorder.stop(budget_failed, nodeid, directory)
        if report is not None and report.path is None:
            from pytest_sdmem.gate.results import write_json_atomic
            from pytest_sdmem.measuring.memory.snapshot import snapshot_file_name

            path = directory / snapshot_file_name(nodeid, ".json")
            try:
                report.path = write_json_atomic(path, report.to_dict())
            except OSError as exc:  # the directory removed or the disk full since configure
                report.notes.append(f"could not write the snapshot to {path}: {exc}")
        return report


STATE = pytest.StashKey[TestState]()


def marked_technique(item: pytest.Item) -> str | None:
    """The canonical technique of the item's ``sd_technique`` markers (all must agree), or
    None without one."""
    if item.get_closest_marker("sd_technique") is None:
        return None
    from pytest_sdmem.building.techniques import parse_technique  # imports torch: only when marked

    return one_value(item, "sd_technique",
                     lambda args, kwargs: parse_technique(parse_sd_technique(args, kwargs)).expr)


def technique_of(item: pytest.Item) -> str:
    """The canonical technique expression of the item's sd_pipe: parametrized, marked, or none.

    A parametrized technique and a marked one that differ are an error: either choice would
    silently measure a pipeline the other asked not to.
    """
    from pytest_sdmem.building.techniques import (
        parse_technique,  # imports torch: only for sd_pipe tests
    )

    marked = marked_technique(item)
    callspec = getattr(item, "callspec", None)
    if callspec is None or "sd_pipe" not in callspec.params:
        return marked or "none"
    param = parse_technique(callspec.params["sd_pipe"]).expr
    if marked is not None and marked != param:
        raise MarkerError(f"sd_pipe is parametrized with {param!r} but @pytest.mark.sd_technique "
                          f"says {marked!r}: keep one")
    return param


@dataclass
class Collector:
    """Records of measured tests, built from their reports (which also cross xdist's wire)."""

    by_nodeid: dict[str, TestRecord] = field(default_factory=dict)

    @property
    def records(self) -> list[TestRecord]:
        return list(self.by_nodeid.values())

    def add(self, report: pytest.TestReport) -> None:
        data = getattr(report, "sdmem", None)
        if report.when == "call" and data is not None:
            from pytest_sdmem.gate.results import TestRecord

            self.by_nodeid[report.nodeid] = TestRecord.from_dict(data)
            return
        record = self.by_nodeid.get(report.nodeid)
        if report.when == "teardown" and record is not None:
            record.leak_bytes = getattr(report, "sdmem_leak_bytes", None)
            if report.failed:
                record.outcome = "error"
