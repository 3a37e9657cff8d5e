"""A measured test's call report: its verdicts, how they change pytest's outcome, and the record
it carries to the controller.

A budget that fails turns a passing test into a failure with its own status word (``VRAM``,
``SLOW``); the failure an ``xfail`` test expects becomes XFAIL; every verdict is a report
section; the figures are JUnit properties and, as plain data on the report, the record that
the session collects (across pytest-xdist's wire too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _pytest.skipping import xfailed_key

from pytest_sdmem.plugin.records import make_record, properties
from pytest_sdmem.plugin.session import Session
from pytest_sdmem.plugin.state import TestState

if TYPE_CHECKING:
    from pytest_sdmem.gate.verdicts import Verdict


def annotate(item: pytest.Item, call: pytest.CallInfo[None], rep: pytest.TestReport,
             state: TestState, session: Session) -> None:
    """Add the plugin's verdicts and figures to the report of a measured test's phase."""
    if call.when == "teardown" and state.leak_bytes is not None:
        rep.sdmem_leak_bytes = state.leak_bytes
        return
    if call.when != "call":
        return
    if rep.skipped and isinstance(rep.longrepr, tuple):
        session.mode.reopen_skipped(state, rep)
        if rep.skipped:
            _record_skipped(item, rep, state, session)
            return
    _judge(item, call, rep, state, session)


def _record_skipped(item: pytest.Item, rep: pytest.TestReport, state: TestState,
                    session: Session) -> None:
    """A skipped call with figures (it skipped after measuring) is recorded, without verdicts."""
    if (report := session.mode.budget_report(state)) is not None:
        record = make_record(item.nodeid, state, report, session.mode)
        record.outcome = rep.outcome
        rep.sdmem = record.to_dict()


def _judge(item: pytest.Item, call: pytest.CallInfo[None], rep: pytest.TestReport,
           state: TestState, session: Session) -> None:
    from pytest_sdmem.gate.sections import SnapshotSection, VerdictSection
    from pytest_sdmem.gate.verdicts import BaselineVerdict, SpeedupVerdict

    mode = session.mode
    rep.sdmem_estimated = mode.has_estimates(state)
    verdicts: list[Verdict] = []
    if (vram := mode.judge_vram(state, call.excinfo)) is not None:
        verdicts.append(vram)
    if state.speedup is not None and state.min_speedup is not None:
        verdicts.append(SpeedupVerdict(state.speedup, state.min_speedup.baseline))
    report = mode.budget_report(state)
    record = make_record(item.nodeid, state, report, mode)
    gate = session.gate
    if gate is not None and call.excinfo is None:
        verdicts.append(BaselineVerdict(gate.judge(record), str(gate.path)))
    failed = [v for v in verdicts if not v.passed]
    snapshot = state.snapshot or state.stop_recording(
        item.nodeid, session.settings.snapshot_dir, vram is not None and not vram.passed)
    if failed and not rep.skipped:
        text = "\n".join(v.as_longrepr() for v in failed)
        if snapshot is not None and snapshot.path is not None:
            viewer = (" (open it at https://pytorch.org/memory_viz)"
                      if snapshot.path.suffix == ".pickle" else "")
            text += f"\nmemory snapshot: {snapshot.path}{viewer}"
        _fail(item, rep, text, failed, oom=vram is not None and vram.oom is not None)
    rep.sections.extend(v.as_section() for v in verdicts)
    if snapshot is not None:
        rep.sections.append(snapshot.as_section())
        record.snapshot = SnapshotSection.of(snapshot)
    item.user_properties.extend(properties(state, report))
    record.outcome = rep.outcome
    record.verdicts = [VerdictSection.from_dict(v.to_dict(), "verdicts") for v in verdicts]
    rep.sdmem = record.to_dict()  # plain data: crosses pytest-xdist's wire to the controller


def _fail(item: pytest.Item, rep: pytest.TestReport, text: str, failed: list[Verdict],
          oom: bool) -> None:
    """The report of a test whose budgets failed (``text`` says which and why)."""
    if (reason := _expected_failure(item)) is not None:
        # The failure an xfail test expects: XFAIL with the budget's message as reason
        # (an XPASS that pytest's skipping plugin already made, strict or not, is undone).
        rep.outcome = "skipped"
        rep.wasxfail = f"{reason}: {text}" if reason else text
        rep.longrepr = text
    elif rep.passed or oom:
        rep.outcome = "failed"
        rep.longrepr = text
        rep.sdmem_status = (failed[0].status_word, failed[0].status_letter)


def _expected_failure(item: pytest.Item) -> str | None:
    """The reason of the item's ``xfail`` marker when a budget failure is the failure it
    expects; None when it is not xfail, runs with ``--runxfail``, or expects a given exception
    (``raises=``: a budget failure is not that exception)."""
    if item.config.option.runxfail:
        return None
    xfailed = item.stash.get(xfailed_key, None)
    if xfailed is None or xfailed.raises is not None:
        return None
    return xfailed.reason


def status_of(report: pytest.TestReport) -> Any:
    """Memory failures read ``VRAM`` (not an assertion failure), and a verdict on an estimate
    says so: ``PASSED (estimated)``, ``VRAM (estimated)``."""
    if report.when != "call":
        return None
    status = getattr(report, "sdmem_status", None)
    estimated = " (estimated)" if getattr(report, "sdmem_estimated", False) else ""
    if status is not None and report.failed:
        word, letter = status
        return "failed", letter, (word + estimated, {"red": True})
    if estimated and report.passed:
        return "passed", ".", ("PASSED" + estimated, {"green": True})
    return None
