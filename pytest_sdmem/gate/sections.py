"""The sections of a test's record: typed, validated where they are read, written back as read.

Each section of a ``TestRecord`` (memory, budget, latency, speed-up, estimate, generation,
snapshot, verdicts) is a frozen dataclass whose fields are the section's JSON keys, each under
the name the code uses. ``from_dict`` checks the figures the comparison and the reports read
(a hand-edited or foreign file fails there, naming the field, never later with a
``TypeError``); the others are carried as the file holds them.

A results file is a contract with the tools that read it later, and a baseline saved by one
version is read by the next. So a section read from a file is written back byte for byte: it
keeps the file's order of keys, leaves out the keys the file did not have, and keeps keys this
version does not know (``extra``) where they were. The ``of`` constructors read the figures'
own ``to_dict`` the same way, so a new file holds what its producer writes; a section built
field by field writes every field in the order of its declaration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pytest_sdmem.base.units import UnitError, check_number
from pytest_sdmem.measuring.metrics import ALLOCATED, METRICS, PROCESS, RESERVED, bytes_key
from pytest_sdmem.measuring.timing import BREAKDOWN_FIGURES

if TYPE_CHECKING:  # reading a results file needs none of them (nor the torch they import)
    from pytest_sdmem.estimate.report import EstimateReport, Overhead
    from pytest_sdmem.measuring.memory import MemoryReport
    from pytest_sdmem.measuring.memory.frames import SnapshotReport
    from pytest_sdmem.measuring.speedup import SpeedupResult
    from pytest_sdmem.measuring.timing import TimingResult

S = TypeVar("S", bound="Section")


class SectionError(ValueError):
    """A section field the comparison or the reports could not read; ``str()`` is its path in
    the record and the problem ("memory.peak_allocated_bytes is not a number")."""


def stored_as(name: str) -> Any:
    """A field (None by default) stored under the JSON key ``name``, not under its own name."""
    return field(default=None, metadata={"key": name})


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite number (not a bool), as a figure must be to be compared."""
    try:
        check_number(value, "figure")
    except UnitError:
        return False
    return True


@dataclass(frozen=True)
class Section:
    """A JSON object of a record as a dataclass; see the module docstring.

    ``NUMBERS`` names the keys that must hold a number when present (True: present too).
    """

    NUMBERS: ClassVar[Mapping[str, bool]] = {}

    #: Keys of the section this version does not know, carried along unread.
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    #: The keys in the order the file had them; None for a section made here.
    layout: tuple[str, ...] | None = field(default=None, kw_only=True, compare=False,
                                           repr=False)

    @classmethod
    @cache
    def keys(cls) -> dict[str, str]:
        """Field name -> JSON key, in the order of declaration."""
        return {f.name: f.metadata.get("key", f.name) for f in fields(cls)
                if f.name not in ("extra", "layout")}

    @classmethod
    def check(cls, data: Mapping[str, Any], where: str) -> None:
        """Raise a ``SectionError`` for the first unreadable figure of ``data``."""
        for name, required in cls.NUMBERS.items():
            value = data.get(name)
            if (value is None and required) or (value is not None and not is_number(value)):
                raise SectionError(f"{where}.{name} is not a number")

    @classmethod
    def from_dict(cls: type[S], data: object, where: str) -> S:
        """The section of the JSON object ``data``, found at ``where`` in the record."""
        if not isinstance(data, dict):
            raise SectionError(f"{where} is not an object")
        cls.check(data, where)
        names = cls.keys()
        known = set(names.values())
        return cls(**{name: cls.read_field(name, data.get(json_key), f"{where}.{json_key}")
                      for name, json_key in names.items()},
                   extra={k: v for k, v in data.items() if k not in known},
                   layout=tuple(data))

    @classmethod
    def read_field(cls, name: str, value: Any, where: str) -> Any:
        """A field's value from its JSON value (a nested section reads itself here)."""
        return value

    def to_dict(self) -> dict[str, Any]:
        values = {json_key: getattr(self, name) for name, json_key in self.keys().items()}
        values = {k: v.to_dict() if isinstance(v, Section) else v for k, v in values.items()}
        values.update(self.extra)
        return {k: values[k] for k in (self.layout if self.layout is not None else values)}


@dataclass(frozen=True)
class MemorySection(Section):
    """``memory``: the highest figures of the test's measured blocks (``MemoryReport``), bytes."""

    NUMBERS: ClassVar[Mapping[str, bool]] = {m.json_key: False for m in METRICS.values()}

    peak_allocated: int | None = stored_as(ALLOCATED.json_key)
    peak_reserved: int | None = stored_as(RESERVED.json_key)
    start_allocated: int | None = stored_as(bytes_key("start_allocated"))
    end_allocated: int | None = stored_as(bytes_key("end_allocated"))
    peak_delta: int | None = stored_as(bytes_key("peak_delta"))
    host_peak_rss: int | None = stored_as(bytes_key("host_peak_rss"))
    host_rss_method: str | None = None
    process_peak: int | None = stored_as(PROCESS.json_key)
    num_alloc_retries: int | None = None
    num_ooms: int | None = None

    @classmethod
    def of(cls, report: MemoryReport) -> MemorySection:
        return cls.from_dict(report.to_dict(), "memory")


@dataclass(frozen=True)
class BudgetSection(Section):
    """``budget``: the test's ``max_vram`` limit, the metric (by name) and the budget's key."""

    NUMBERS: ClassVar[Mapping[str, bool]] = {"max_vram_bytes": True}

    limit: int | None = stored_as("max_vram_bytes")
    metric: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class LatencySection(Section):
    """``latency``: the test pipeline's latency in seconds (``TimingResult.to_dict``), or the
    test side of min_speedup's rounds (``source`` "min_speedup": median and rounds only).

    The breakdown of ``SdPipe.latency`` (``BREAKDOWN_FIGURES``) is present only when one was
    timed; each part's interval and round times (``per_step_ci_low``, ``per_step_times``) are
    carried in ``extra``."""

    NUMBERS: ClassVar[Mapping[str, bool]] = dict.fromkeys(("median", *BREAKDOWN_FIGURES), False)

    times: list[float] | None = None
    warmup: int | None = None
    rounds: int | None = None
    median: float | None = None
    iqr: float | None = None
    total: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    stop_reason: str | None = None
    source: str | None = None
    load: float | None = None
    first_call: float | None = None
    per_step: float | None = None
    text_encoding: float | None = None
    vae_decode: float | None = None

    @classmethod
    def of(cls, timing: TimingResult) -> LatencySection:
        return cls.from_dict(timing.to_dict(), "latency")

    @classmethod
    def of_speedup(cls, result: SpeedupResult) -> LatencySection:
        """The test side of min_speedup's paired rounds, when the test timed nothing else."""
        return cls.from_dict({"median": result.median_test, "rounds": result.pairs,
                              "source": "min_speedup"}, "latency")

    def figure(self, name: str) -> float | None:
        """The figure ``name``: ``median``, ``ci_low``, ``ci_high`` or one of the breakdown."""
        value: float | None = getattr(self, name)
        return value


@dataclass(frozen=True)
class SpeedupSection(Section):
    """``speedup``: min_speedup's paired rounds (``SpeedupResult``); no interval (both bounds
    null) is a measurement that stopped inconclusive before it had the pairs for one."""

    NUMBERS: ClassVar[Mapping[str, bool]] = {"ratio": True, "ci_low": False, "ci_high": False}

    factor: float | None = None
    error_rate: float | None = None
    times_test: list[float] | None = None
    times_base: list[float] | None = None
    ratios: list[float] | None = None
    median_test: float | None = None
    median_base: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    pairs: int | None = None
    verdict: str | None = None
    method: str | None = None
    heavy_tailed: bool | None = None
    stop_reason: str | None = None
    elapsed: float | None = None
    interval_confidence: float | None = None

    @classmethod
    def check(cls, data: Mapping[str, Any], where: str) -> None:
        super().check(data, where)
        if (data.get("ci_low") is None) != (data.get("ci_high") is None):
            raise SectionError(f"{where} has one of ci_low and ci_high: give both, or null for "
                               "both")

    @classmethod
    def of(cls, result: SpeedupResult) -> SpeedupSection:
        return cls.from_dict(result.to_dict(), "speedup")


@dataclass(frozen=True)
class OverheadSection(Section):
    """``estimate.overhead``: the calibrated overhead added to an estimate (``Overhead``)."""

    device_name: str | None = None
    reserved: int | None = stored_as("reserved_bytes")
    process: int | None = stored_as("process_bytes")
    calibrated: str | None = None

    @classmethod
    def check(cls, data: Mapping[str, Any], where: str) -> None:
        for name in ("reserved_bytes", "process_bytes"):
            value = data.get(name)
            if value is not None and not (is_number(value) and value >= 0):
                raise SectionError(f"{where}.{name} is not a number of bytes")


@dataclass(frozen=True)
class EstimateSection(Section):
    """``estimate``: how an estimate was made (``EstimateReport.to_dict``) and the calibrated
    overhead it includes."""

    estimated: bool | None = None
    model: str | None = None
    technique: str | None = None
    generation: dict[str, Any] | None = None
    steps_estimated: int | None = None
    safety_checker: bool | None = None
    estimated_allocated: int | None = stored_as("estimated_allocated_bytes")
    estimated_reserved: int | None = stored_as("estimated_reserved_bytes")
    start_allocated: int | None = stored_as("start_allocated_bytes")
    end_allocated: int | None = stored_as("end_allocated_bytes")
    tensor_bytes_at_peak: int | None = None
    peak_phase: str | None = None
    phase_peaks: Mapping[str, int] | None = stored_as("phase_peaks_bytes")
    placement: str | None = None
    attention_kernels: dict[str, int] | None = None
    gpu: str | None = None
    blas_workspaces: str | None = None
    peak_place: dict[str, Any] | None = None
    seconds: float | None = None
    not_modelled: list[str] | None = None
    overhead: OverheadSection | None = None

    @classmethod
    def read_field(cls, name: str, value: Any, where: str) -> Any:
        if name == "overhead" and value is not None:
            return OverheadSection.from_dict(value, where)
        return value

    @classmethod
    def of(cls, report: EstimateReport, overhead: Overhead | None) -> EstimateSection:
        return cls.from_dict({**report.to_dict(),
                              "overhead": overhead.to_dict() if overhead else None}, "estimate")

    @property
    def applied_reserved(self) -> int:
        """The overhead already in the record's reserved figure (0 without one)."""
        return (self.overhead.reserved if self.overhead else None) or 0


@dataclass(frozen=True)
class GenerationSection(Section):
    """``generation``: the settings of the test's last sd_pipe generation that change its
    figures (``runner.generation_settings``). Figures of different generations are never
    compared."""

    family: str | None = None
    model: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    max_sequence_length: int | None = None
    dtype: str | None = None
    safety_checker: bool | None = None


@dataclass(frozen=True)
class SnapshotSection(Section):
    """``snapshot``: the allocations alive at the peak of a failed budget (``SnapshotReport``)."""

    device: str | None = None
    peak: int | None = stored_as("peak_bytes")
    path: str | None = None
    allocations: list[dict[str, Any]] | None = None
    unlisted_bytes: int | None = None
    unlisted_count: int | None = None
    untraced_bytes: int | None = None
    untraced_count: int | None = None
    notes: list[str] | None = None

    @classmethod
    def of(cls, report: SnapshotReport) -> SnapshotSection:
        return cls.from_dict(report.to_dict(), "snapshot")


@dataclass(frozen=True)
class VerdictSection(Section):
    """One of ``verdicts``: a verdict's ``to_dict`` (its other figures, which depend on its
    kind, are in ``extra``)."""

    kind: str = ""
    passed: bool | None = None
    message: str | None = None
