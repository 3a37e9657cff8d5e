"""scripts/gpu_first_contact.sh, the one prepared run for a borrowed GPU's few minutes, keeps
its deadline and its promises: steps in order, a step that does not fit is skipped and named,
a failing step fails the run, and everything comes back as two files.

No GPU here, so the Python it runs is a stand-in answering each command the script gives it
(what is tested is the orchestration; nothing is measured). The real GPU tier script runs
under it, with the stand-in as its Python too."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

STAND_IN = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  *pytest_sdmem.doctor*) exit 0 ;;
  *"gpu_time_budget.py --parts"*) printf '1\tfirst part\n100000\tsecond part\n' ;;
  *estimate_vs_gpu.py*) echo "estimates" ;;
  *cudnn_workspaces.py*) echo "no cuDNN here" >&2; exit 3 ;;
  *"-m pytest"*) echo "pytest ran"; sleep "${PYTEST_SECONDS:-0}" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> dict[str, str]:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return {**os.environ, "PYTHON": str(python), "CALLS": str(tmp_path / "calls"),
            "PATH": os.environ["PATH"]}


def test_steps_run_in_order_within_the_deadline(tmp_path: Path,
                                                stand_in: dict[str, str]) -> None:
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_first_contact.sh"), str(out),
                             "600"], env=stand_in, capture_output=True, text=True, timeout=120)
    # cuDNN's step failed (exit 3), so the run fails; the rest still ran.
    assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["first_contact.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].strip("| ") for row in rows[1:]] == [
        "estimate_gate", "cudnn", "part1", "part2"]
    assert "| cudnn | 3 |" in summary
    assert "| part1 | 0 |" in summary
    assert "| part2 | - | - | skipped:" in summary and "expected 100000 s" in summary
    calls = Path(stand_in["CALLS"]).read_text()
    assert "--rows gate" in calls and "-k first part" in calls
    assert "-k second part" not in calls
    with tarfile.open(out / "first_contact.tar.gz") as tar:
        names = tar.getnames()
    assert {"./estimate_gate.log", "./cudnn.log", "./part1.log"} <= set(names)
    assert any(name.startswith("./part1/") for name in names)


def test_steps_that_do_not_fit_are_skipped(tmp_path: Path, stand_in: dict[str, str]) -> None:
    """A deadline shorter than a step's expected time skips it, and the summary says how much
    was left; a later, shorter step still runs."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_first_contact.sh"), str(out), "30"],
                            env=stand_in, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = (out / "summary.md").read_text()
    assert "| estimate_gate | - | - | skipped:" in summary
    assert "| cudnn | - | - | skipped:" in summary
    assert "| part1 | 0 |" in summary  # its 1 s fits in what is left


def test_a_step_running_past_the_deadline_is_stopped(tmp_path: Path,
                                                      stand_in: dict[str, str]) -> None:
    """The GPU tier's pytest would run 60 s; the deadline stops it, and the summary says so."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "scripts/gpu_first_contact.sh"), str(out), "4"],
                            env={**stand_in, "PYTEST_SECONDS": "60"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    summary = (out / "summary.md").read_text()
    assert "| part1 | 124 |" in summary and "stopped at the deadline" in summary
