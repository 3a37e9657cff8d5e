"""Verdicts: a measured figure against what a marker promised.

Each verdict kind is one small dataclass that renders itself: a one-line reason for the failure
(``as_longrepr``), a report section with every figure (``as_section``), and a dict for the JSON
results. The pytest glue only asks ``passed`` and shows what the verdict renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.deltas import MetricDelta
from pytest_sdmem.gate.markers import MaxVram
from pytest_sdmem.measuring.memory import MemoryReport
from pytest_sdmem.measuring.metrics import METRICS
from pytest_sdmem.measuring.speedup import SpeedupResult


class Verdict(Protocol):
    kind: str
    status_word: str
    status_letter: str

    @property
    def passed(self) -> bool: ...

    def as_longrepr(self) -> str: ...

    def as_section(self) -> tuple[str, str]: ...

    def to_dict(self) -> dict[str, Any]: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out: CUDA's ``OutOfMemoryError``, or the CPU
    allocator's ``RuntimeError`` ("can't allocate memory"), which has no type of its own."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _device_label(report: MemoryReport) -> str:
    if report.device_name and report.device_name != report.device:
        return f"{report.device} {report.device_name}"
    return report.device


def metric_value(report: MemoryReport, metric: str) -> int | None:
    """The figure of ``report`` that a ``max_vram`` metric (by name) is about."""
    return METRICS[metric].value(report)


@dataclass
class VramVerdict:
    """``max_vram``: the highest peak of the test's call (or of its tracker blocks) vs the limit.

    ``oom`` holds the allocator's message when the test ran out of memory: that is a budget
    failure too, since the budget was the promise that it would fit. ``note`` says how the figure
    was made when it is not measured alone (an estimate plus a GPU's calibrated overhead).
    """

    spec: MaxVram
    report: MemoryReport
    oom: str | None = None
    error: str | None = None
    note: str | None = None
    kind: str = "max_vram"
    status_word: str = "VRAM"
    status_letter: str = "V"

    @property
    def peak(self) -> int | None:
        return metric_value(self.report, self.spec.metric)

    @property
    def passed(self) -> bool:
        return self.oom is None and self.error is None and self.peak is not None and (
            self.peak <= self.spec.limit
        )

    def as_longrepr(self) -> str:
        where = _device_label(self.report)
        if self.oom is not None:
            first_line = self.oom.splitlines()[0] if self.oom else "out of memory"
            return (f"out of memory under {self.spec.describe()} on {where}: "
                    f"the allocator ran out ({first_line})")
        if self.error is not None or self.peak is None:
            return f"{self.spec.describe()} could not be checked on {where}: {self.error}"
        noun = "peak VRAM" if self.report.device.startswith("cuda") else "peak memory"
        head = f"{noun} {format_size(self.peak)} ({self.spec.metric}, {where})"
        over = self.peak - self.spec.limit
        if over > 0:
            line = (f"{head} exceeded max_vram {format_size(self.spec.limit)} by "
                    f"{format_size(over)} (+{100 * over / self.spec.limit:.1f}%)")
        else:
            line = f"{head} within max_vram {format_size(self.spec.limit)}"
        return f"{line}; {self.note}" if self.note else line

    def as_section(self) -> tuple[str, str]:
        return ("sdmem: memory", str(self.report))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "passed": self.passed,
            "limit_bytes": self.spec.limit,
            "metric": self.spec.metric,
            "peak_bytes": self.peak,
            "oom": self.oom,
            "error": self.error,
            "message": self.as_longrepr(),
        }


@dataclass
class SpeedupVerdict:
    """``min_speedup``: the paired-rounds speed-up of the test's pipeline over its baseline."""

    result: SpeedupResult
    baseline: str
    kind: str = "min_speedup"
    status_word: str = "SLOW"
    status_letter: str = "S"

    @property
    def passed(self) -> bool:
        return self.result.verdict == "pass"

    def as_longrepr(self) -> str:
        return self.result.reason(self.baseline)

    def as_section(self) -> tuple[str, str]:
        return ("sdmem: speed-up", self.result.section())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "baseline": self.baseline,
                "message": self.as_longrepr()}


@dataclass
class BaselineVerdict:
    """``--sdmem-compare``: this test's figures against the saved baseline's."""

    deltas: list[MetricDelta]
    baseline_path: str
    kind: str = "baseline"
    status_word: str = "REGRESSED"
    status_letter: str = "R"

    @property
    def passed(self) -> bool:
        return not any(d.status == "regression" for d in self.deltas)

    def as_longrepr(self) -> str:
        regressions = [d.message for d in self.deltas if d.status == "regression"]
        return "regressed against baseline " + self.baseline_path + ": " + "; ".join(
            regressions)

    def as_section(self) -> tuple[str, str]:
        lines = [f"baseline {self.baseline_path}"] + [d.message for d in self.deltas]
        return ("sdmem: baseline", "\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "baseline": self.baseline_path,
                "deltas": [{"figure": d.figure, "base": d.base, "head": d.head,
                            "status": d.status, "message": d.message} for d in self.deltas]}
