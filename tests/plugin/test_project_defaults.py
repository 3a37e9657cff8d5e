"""What the plugin reads and writes in a user's project by default: only the budgets file the
user names."""

from __future__ import annotations

from pathlib import Path

import pytest

BUDGET_TEST = """
import pytest, torch

@pytest.mark.max_vram(budget="small")
def test_alloc():
    x = torch.ones(2**20, dtype=torch.uint8)
"""


@pytest.fixture
def project_with_budgets(pytester: pytest.Pytester) -> Path:
    """A project that happens to have a budgets file where this repository keeps its own."""
    budgets = pytester.path / "tests" / "techniques" / "budgets.toml"
    budgets.parent.mkdir(parents=True)
    budgets.write_text('[default]\nsmall = "1 GB"\n')
    pytester.makepyfile(test_budget=BUDGET_TEST)
    return budgets


def test_a_budgets_file_nobody_named_is_not_loaded(
    pytester: pytest.Pytester, project_with_budgets: Path
) -> None:
    result = pytester.runpytest("-rA")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*max_vram(budget='small') needs a budgets file*"])


def test_the_ini_key_names_a_budgets_file_relative_to_the_ini_file(
    pytester: pytest.Pytester, project_with_budgets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nsdmem_budgets = tests/techniques/budgets.toml\n")
    pytester.runpytest("-rA").assert_outcomes(passed=1)
    # From another working directory the ini key still names the same file.
    monkeypatch.chdir(project_with_budgets.parent)
    pytester.runpytest("-rA", str(pytester.path)).assert_outcomes(passed=1)
