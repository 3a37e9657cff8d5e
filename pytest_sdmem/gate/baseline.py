"""Compare a run against a saved baseline run: what regressed, what improved, what is new or gone.

This is the core of the regression gate, shared by the pytest plugin (``--sdmem-compare``, which
fails each regressed test in its own report) and the ``sdmem compare`` command (exit status 1).

Here: reading a baseline or results file, matching the tests of two runs, and the comparison
with its text and markdown renderings. Only like is compared with like: a test measured on
another model, or whose records must not be compared (``comparable.unlike``: another card or
device type, other generation settings, estimated against measured), is listed as not compared
with the reason; the figures of the others are compared one by one (``deltas``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pytest_sdmem.base.tables import escape_cell, markdown_table, text_table
from pytest_sdmem.gate.comparable import environment_differences, unlike
from pytest_sdmem.gate.deltas import (
    DELTA_COLUMNS,
    MetricDelta,
    RecordKey,
    compare_figures,
    record_key,
)
from pytest_sdmem.gate.results import ResultsError, RunResults, TestRecord
from pytest_sdmem.gate.tolerances import DEFAULT_TOLERANCES, Tolerances

REFRESH_HINT = (
    "refresh the baseline (save a new one with pytest --sdmem-save PATH, or let the next run on "
    "main save it) so that later changes are measured from the new level"
)


class BaselineError(ValueError):
    """A baseline or results file that cannot be used; the message names the file and why.

    The plugin turns it into a usage error and the ``sdmem`` command into exit status 2.
    """


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
        statuses = [d.status for d in self.deltas]
        counts = (
            (len(self.regressions), "regressed"),
            (len(self.improvements), "improved"),
            (statuses.count("unchanged"), "unchanged"),
            (statuses.count("not judged"), "not judged"),
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
            reason = unlike(base_record, base.environment, record, head.environment)
            if reason is None:
                comparison.deltas += compare_figures(key, base_record, record, tolerances)
                continue
        comparison.not_compared.append(NotCompared(key, reason))
        reasons[reason] += 1

    comparison.gone = [k for k in base_index if k not in matched]
    comparison.warnings += [
        f"{n} test{'s' if n != 1 else ''} not compared: {reason}" for reason, n in reasons.items()
    ]
    comparison.warnings += environment_differences(base.environment, head.environment)
    return comparison


def compare_record(base: TestRecord, base_env: dict[str, Any], head: TestRecord,
                   head_env: dict[str, Any], tolerances: Tolerances) -> list[MetricDelta]:
    """The deltas ``compare_runs`` finds for one test whose baseline record is ``base``: none
    when the two must not be compared (``comparable.unlike``). Judging one record needs no more."""
    if unlike(base, base_env, head, head_env) is not None:
        return []
    return compare_figures(record_key(head), base, head, tolerances)


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
