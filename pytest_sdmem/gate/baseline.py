"""Compare a run against a saved baseline run: what regressed, what improved, what is new or gone.

This is the core of the regression gate, shared by the pytest plugin (``--sdmem-compare``, which
fails each regressed test in its own report) and the ``sdmem compare`` command (exit status 1).

Only like is compared with like: figures measured on another card, another device type, another
model, or estimated rather than measured, are never compared; each such test is listed as not
compared with the reason, because a silent cross-card comparison would gate on noise.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pytest_sdmem.base.tables import Row, escape_cell, markdown_table, text_table
from pytest_sdmem.gate.results import ResultsError, RunResults, TestRecord
from pytest_sdmem.gate.sections import GenerationSection
from pytest_sdmem.gate.tolerances import (
    DEFAULT_TOLERANCES,
    FORMATTERS,
    Tolerance,
    Tolerances,
    format_change,
)
from pytest_sdmem.measuring.metrics import ALLOCATED, RESERVED, Metric
from pytest_sdmem.measuring.timing import BREAKDOWN_FIGURES

Status = Literal["regression", "improvement", "unchanged"]

REFRESH_HINT = (
    "refresh the baseline (save a new one with pytest --sdmem-save PATH, or let the next run on "
    "main save it) so that later changes are measured from the new level"
)

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


class BaselineError(ValueError):
    """A baseline or results file that cannot be used; the message names the file and why.

    The plugin turns it into a usage error and the ``sdmem`` command into exit status 2.
    """


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
    # The breakdown of sd_pipe.latency(): each part, like the whole, is worse when slower.
    *(_Figure(name, "latency", True, _latency(name)) for name in BREAKDOWN_FIGURES),
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


@dataclass(frozen=True)
class NotCompared:
    """A test present on both sides whose figures were not compared, and why."""

    key: RecordKey
    reason: str


@dataclass
class Comparison:
    """The outcome of :func:`compare_runs`."""

    tolerances: Tolerances
    deltas: list[MetricDelta] = field(default_factory=list)
    new: list[RecordKey] = field(default_factory=list)
    gone: list[RecordKey] = field(default_factory=list)
    not_compared: list[NotCompared] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricDelta]:
        return [d for d in self.deltas if d.status == "regression"]

    @property
    def improvements(self) -> list[MetricDelta]:
        return [d for d in self.deltas if d.status == "improvement"]

    @property
    def passed(self) -> bool:
        """The gate's verdict: no figure regressed beyond its tolerance."""
        return not self.regressions

    def for_nodeid(self, nodeid: str) -> list[MetricDelta]:
        """Every delta of one test (all its models and techniques), for its own report.

        The plugin fails the test with ``[d.message for d in ... if d.status == "regression"]``.
        """
        return [d for d in self.deltas if d.key.nodeid == nodeid]

    def summary(self) -> str:
        unchanged = len(self.deltas) - len(self.regressions) - len(self.improvements)
        counts = (
            (len(self.regressions), "regressed"),
            (len(self.improvements), "improved"),
            (unchanged, "unchanged"),
        )
        tests = (
            (len(self.new), "new"),
            (len(self.gone), "gone"),
            (len(self.not_compared), "not compared"),
        )
        return (
            "figures: " + ", ".join(f"{n} {what}" for n, what in counts)
            + "; tests: " + ", ".join(f"{n} {what}" for n, what in tests)
            + f"; tolerances {self.tolerances}"
        )

    def _sections(self) -> list[tuple[str, list[str]]]:
        """Titled lists shared by the text and markdown renderings; empty ones are left out."""
        sections = [
            ("Regressions beyond tolerance", [f"{d.key}: {d.message}" for d in self.regressions]),
            (
                f"Improvements beyond tolerance: {REFRESH_HINT}",
                [f"{d.key}: {d.message}" for d in self.improvements],
            ),
            ("Not comparable (figures not compared)",
             [f"{n.key}: {n.reason}" for n in self.not_compared]),
            ("New since the baseline (not compared)", [str(k) for k in self.new]),
            ("Gone since the baseline", [str(k) for k in self.gone]),
            ("Warnings", self.warnings),
        ]
        return [(title, items) for title, items in sections if items]

    def render_text(self, width: int | None = None) -> str:
        """The comparison as terminal text, its table at most ``width`` characters wide."""
        lines = (text_table([d.row() for d in self.deltas], DELTA_COLUMNS, width)
                 if self.deltas else ["no figures compared"])
        for title, items in self._sections():
            lines += ["", f"{title}:", *(f"  {item}" for item in items)]
        return "\n".join([*lines, "", self.summary()]) + "\n"

    def render_markdown(self, title: str = "pytest-sdmem: comparison with the baseline") -> str:
        lines = [f"### {escape_cell(title)}", ""]
        if self.deltas:
            lines += markdown_table(DELTA_COLUMNS, (d.row() for d in self.deltas))
        else:
            lines.append("_No figures compared._")
        for heading, items in self._sections():
            lines += ["", f"**{escape_cell(heading)}**", ""]
            lines += [f"- {escape_cell(item)}" for item in items]
        return "\n".join([*lines, "", escape_cell(self.summary())]) + "\n"


def _status(figure: _Figure, base: float, head: float, tolerance: Tolerance) -> Status:
    change = head - base
    if abs(change) <= tolerance.limit(base):
        return "unchanged"
    worse = change > 0 if figure.higher_is_worse else change < 0
    return "regression" if worse else "improvement"


def _device_label(name: str) -> str:
    return repr(name) if name else "an unnamed device"


def _device_type(record: TestRecord, environment: dict[str, Any]) -> str:
    return str(record.device or environment.get("device") or "").split(":")[0]


def _unlike(base: TestRecord, base_env: dict[str, Any], head: TestRecord,
            head_env: dict[str, Any]) -> str | None:
    """Why two records of the same test must not be compared, or ``None`` when they may be."""
    base_type, head_type = _device_type(base, base_env), _device_type(head, head_env)
    if base_type != head_type:
        return f"baseline measured on {base_type or '?'}, this run on {head_type or '?'}"
    base_name = base.device_name or base_env.get("device_name") or ""
    head_name = head.device_name or head_env.get("device_name") or ""
    if base_name != head_name:
        return (
            f"baseline measured on {_device_label(base_name)}, this run on "
            f"{_device_label(head_name)} (figures are never compared across cards)"
        )
    if base.is_estimate != head.is_estimate:
        which = "baseline" if base.is_estimate else "this run"
        return f"the {which}'s figures are estimates, the other's are measured"
    return _generation_difference(base.generation, head.generation)


def _generation_difference(base_section: GenerationSection | None,
                           head_section: GenerationSection | None) -> str | None:
    """How two records' generation settings differ (None: alike). A record without them from
    a file written before they were recorded cannot be shown to be alike: not comparable."""
    if base_section is None or head_section is None:
        if base_section is head_section:
            return None
        which = "the baseline" if base_section is None else "this run"
        return (f"{which} does not record the generation settings (written by an older "
                "pytest-sdmem): save a new baseline")
    base, head = base_section.to_dict(), head_section.to_dict()
    names = [*GENERATION_ORDER, *sorted((set(base) | set(head)) - set(GENERATION_ORDER))]
    diff = [n for n in names if base.get(n) != head.get(n)]
    if not diff:  # a setting one side writes as null and the other leaves out is no difference
        return None
    return ("generated differently: "
            + ", ".join(f"{n} {base.get(n)!r} in the baseline, {head.get(n)!r} now" for n in diff))


#: The order in which generation differences are named (any other field comes after).
GENERATION_ORDER = ("family", "model", "height", "width", "steps", "batch_size", "dtype",
                    "guidance_scale", "scheduler", "max_sequence_length", "safety_checker")


def _index(run: RunResults, side: str, warnings: list[str]) -> dict[RecordKey, TestRecord]:
    index: dict[RecordKey, TestRecord] = {}
    for record in run.results:
        key = record_key(record)
        if key in index:
            warnings.append(f"{side} has {key} more than once; its last record is used")
        index[key] = record
    return index


def compare_runs(
    base: RunResults, head: RunResults, tolerances: Tolerances = DEFAULT_TOLERANCES
) -> Comparison:
    """Compare every figure ``head`` shares with ``base``; see the module docstring."""
    comparison = Comparison(tolerances)
    base_index = _index(base, "the baseline", comparison.warnings)
    head_index = _index(head, "this run", comparison.warnings)
    # Same test and technique under another model: "not compared", rather than new plus gone.
    other_models: dict[tuple[str, str | None], list[RecordKey]] = defaultdict(list)
    for key in base_index:
        if key not in head_index:
            other_models[key.nodeid, key.technique].append(key)
    matched: set[RecordKey] = set()
    reasons: dict[str, int] = defaultdict(int)

    for key, record in head_index.items():
        base_record = base_index.get(key)
        if base_record is None:
            others = other_models.get((key.nodeid, key.technique))
            if not others:
                comparison.new.append(key)
                continue
            matched.update(others)
            models = ", ".join(repr(k.model) for k in others)
            reason = f"baseline measured model {models}, this run {key.model!r}"
        else:
            matched.add(key)
            reason = _unlike(base_record, base.environment, record, head.environment)
            if reason is None:
                comparison.deltas += _deltas(key, base_record, record, tolerances)
                continue
        comparison.not_compared.append(NotCompared(key, reason))
        reasons[reason] += 1

    comparison.gone = [k for k in base_index if k not in matched]
    comparison.warnings += [
        f"{n} test{'s' if n != 1 else ''} not compared: {reason}" for reason, n in reasons.items()
    ]
    comparison.warnings += environment_differences(base.environment, head.environment)
    return comparison


def _deltas(key: RecordKey, base: TestRecord, head: TestRecord,
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


def compare_record(base: TestRecord, base_env: dict[str, Any], head: TestRecord,
                   head_env: dict[str, Any], tolerances: Tolerances) -> list[MetricDelta]:
    """The deltas ``compare_runs`` finds for one test whose baseline record is ``base``: none
    when the two must not be compared (``_unlike``). Judging one record needs no more."""
    if _unlike(base, base_env, head, head_env) is not None:
        return []
    return _deltas(record_key(head), base, head, tolerances)


def _gpu_field(key: str) -> Callable[[dict[str, Any]], Any]:
    """Reads ``key`` of the environment's NVML description of the GPU (None without one)."""

    def read(env: dict[str, Any]) -> Any:
        gpu = env.get("gpu")
        return gpu.get(key) if isinstance(gpu, dict) else None

    return read


#: What can change every figure without any change in the code under test, and where a
#: results file's environment holds it. The GPU model is not here: figures of another model
#: are not compared at all (``_unlike``).
_ENVIRONMENT_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("NVIDIA driver", lambda env: env.get("driver_version") or _gpu_field("driver")(env)),
    ("torch", lambda env: env.get("torch")),
    ("torch's CUDA", lambda env: env.get("cuda_version")),
    ("GPU (UUID: the physical card)", _gpu_field("uuid")),
)


def environment_differences(base_env: dict[str, Any], head_env: dict[str, Any]) -> list[str]:
    """A warning for each of driver, torch, CUDA and physical GPU that the baseline and this run
    both record and that differ: their figures are compared, but a change may come from there.
    A field either side lacks (an older results file) is not a difference."""
    warnings = []
    for label, read in _ENVIRONMENT_FIELDS:
        base, head = read(base_env), read(head_env)
        if base is not None and head is not None and base != head:
            warnings.append(f"the baseline and this run differ in {label}: {base} vs {head}; "
                            "a change in the figures may come from it")
    return warnings


def load_results(path: str | os.PathLike[str], what: str = "results file") -> RunResults:
    """Read a results file for comparing or reporting; any problem is a :class:`BaselineError`.

    ``RunResults.read`` checks the envelope and the record fields the comparison and the
    reports read, so a hand-edited or foreign file fails here with its name rather than deep
    inside a report with a ``TypeError``. The file is only ever read.
    """
    try:
        run = RunResults.read(path)
    except ResultsError as exc:
        raise BaselineError(f"{what} {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. not UTF-8, odd field types
        raise BaselineError(
            f"{what} {os.fspath(path)}: not a pytest-sdmem results file ({exc})"
        ) from exc
    return run


def load_baseline(path: str | os.PathLike[str]) -> RunResults:
    """Read a baseline: a results file of a session that ran to its end, refused with a
    :class:`BaselineError` naming it otherwise (the figures of an interrupted run would make
    every test it did not reach "new" and hide their regressions)."""
    run = load_results(path, "baseline")
    if not run.complete:
        raise BaselineError(f"baseline {os.fspath(path)} is the results file of a session that "
                            f"did not complete ({run.incomplete_reason}): not a baseline")
    return run
