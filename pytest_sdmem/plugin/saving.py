"""What a session writes at its end, and when a baseline may be saved.

A baseline is what later runs are judged against, so it is written only by a session that ran
to its end: every selected test ran, whatever its outcome (a failing test's figures are what a
gate compares next time). An interrupted session, one stopped early by ``-x``/``--maxfail``,
one with a collection error, ``--collect-only``, or one that collected or measured nothing
leaves the previous baseline byte-identical and says why. The results file
(``--sdmem-json``) is always written, marked ``"complete": false`` with the reason when the
session did not complete.

Each output is written on its own: a failure to write one (a full disk, a directory removed
meanwhile) is reported naming its path, and never stops the others or the terminal summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the results module costs the plugin's import time (its sections)
    from pytest_sdmem.gate.results import RunResults


@dataclass(frozen=True)
class SessionEnd:
    """How the session ended, as far as it decides whether its figures are a baseline."""

    exitstatus: int
    collect_only: bool = False
    collect_errors: int = 0
    interrupted: str | None = None
    stopped: str | None = None  # pytest's shouldfail/shouldstop: -x, --maxfail, a plugin

    def incomplete_reason(self) -> str | None:
        """Why the session did not run to its end, or None when it did."""
        if self.collect_only:
            return "--collect-only ran no test"
        if self.collect_errors:  # before interrupted: pytest stops collection errors with it
            return f"{self.collect_errors} error(s) during collection: not every test ran"
        if self.interrupted is not None:
            return f"the session was interrupted ({self.interrupted})"
        reasons = {
            pytest.ExitCode.INTERNAL_ERROR: "an internal error stopped the session",
            pytest.ExitCode.USAGE_ERROR: "the session stopped at a usage error",
            pytest.ExitCode.NO_TESTS_COLLECTED: "no test was collected (or -k/-m deselected "
                                                "every test)",
            pytest.ExitCode.INTERRUPTED: "the session was interrupted",
        }
        if self.exitstatus in reasons:
            return reasons[self.exitstatus]
        if self.stopped:
            return f"the session stopped early ({self.stopped}): not every test ran"
        return None


@dataclass(frozen=True)
class Outcome:
    """One line for the terminal: what was written where, or why not."""

    text: str
    ok: bool


def _records(run: RunResults) -> str:
    n = len(run.results)
    return f"{n} record{'s' if n != 1 else ''}"


def _write(run: RunResults, path: Path, what: str) -> Outcome:
    try:
        run.write(path)
    except Exception as exc:  # noqa: BLE001 - one output failing must not stop the others
        return Outcome(f"could not write {what} {path}: {exc}", ok=False)
    incomplete = "" if run.complete else f", incomplete: {run.incomplete_reason}"
    # A baseline is for later runs: say how to use it.
    then = f"; compare a later run with --sdmem-compare {path}" if what == "baseline" else ""
    return Outcome(f"wrote {what} {path} ({_records(run)}{incomplete}){then}", ok=True)


def write_outputs(run: RunResults, json_path: Path | None, save_path: Path | None
                  ) -> list[Outcome]:
    """Write the results file and the baseline, each on its own (see the module docstring)."""
    outcomes = []
    if json_path is not None:
        outcomes.append(_write(run, json_path, "results"))
    if save_path is None:
        return outcomes
    why_not = run.incomplete_reason if not run.complete else (
        None if run.results else "no test was measured")
    if why_not is None:
        outcomes.append(_write(run, save_path, "baseline"))
    else:
        kept = "the file there is unchanged" if save_path.exists() else "none written"
        outcomes.append(Outcome(f"baseline NOT saved to {save_path}: {why_not}; {kept}",
                                ok=False))
    return outcomes
