"""benchmarks/gpu_time_budget.py stays true to the suite: its table names exactly the tests of
tests/techniques, so a new or renamed GPU test cannot be left out of the paper budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_time_budget  # noqa: E402


def test_the_budget_covers_every_test_of_the_technique_suite() -> None:
    """Collected on the CPU: a test marked gpu is collected (and skipped) there with the node
    id it has with --gpu, parameters included."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/techniques"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    collected = {line.removeprefix("tests/techniques/") for line in out.stdout.splitlines()
                 if line.startswith("tests/techniques/")}
    table = set(gpu_time_budget.TESTS)
    assert collected, out.stdout
    assert not collected - table, f"tests missing from the budget: {sorted(collected - table)}"
    assert not table - collected, f"budget entries of no test: {sorted(table - collected)}"


def test_the_documented_parts_run_every_test_once_within_four_minutes() -> None:
    """docs/gpu-time-budget.md's -k split: each test in exactly one part, each part at most
    PART_LIMIT_S on paper (a session on a cold machine included)."""
    parts = [gpu_time_budget.selected(expr) for expr in gpu_time_budget.PARTS]
    assert sorted(n for part in parts for n in part) == sorted(gpu_time_budget.TESTS)
    for expr, part in zip(gpu_time_budget.PARTS, parts, strict=True):
        _, seconds = gpu_time_budget.report(part)
        assert seconds <= gpu_time_budget.PART_LIMIT_S, (expr, seconds)


def test_k_selects_as_pytest_and_the_parts_add_up() -> None:
    everything = gpu_time_budget.selected(None)
    guide = gpu_time_budget.selected("guide_table")
    rest = gpu_time_budget.selected("not guide_table")
    assert guide and rest and sorted(guide + rest) == sorted(everything)
    assert gpu_time_budget.selected("fp16+sdpa") == [
        n for n in everything if "fp16+sdpa" in n]
    _, total = gpu_time_budget.report(everything)
    _, part = gpu_time_budget.report(guide)
    assert 0 < part < total


def test_the_doc_shows_what_the_script_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/gpu-time-budget.md quotes the script's output: regenerate it when the table or a
    figure changes (python benchmarks/gpu_time_budget.py)."""
    assert gpu_time_budget.main([]) == 0
    printed = capsys.readouterr().out
    doc = (ROOT / "docs" / "gpu-time-budget.md").read_text(encoding="utf-8")
    assert printed in doc, "docs/gpu-time-budget.md's budget block is not the script's output"
    stale = [name for name, f in gpu_time_budget.FIGURES.items()
             if f"| `{name}` | {f.value:.4g} | {f.kind} | {f.source} |" not in doc]
    assert not stale, f"figures not as in the script in docs/gpu-time-budget.md: {stale}"
