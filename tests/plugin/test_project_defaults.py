"""What the plugin reads and writes in a user's project by default: only the budgets file the
user names, and synthetic models inside pytest's own cache directory."""

from __future__ import annotations

import re
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


CACHE_DIR_TEST = """
from pytest_sdmem.plugin.state import SETTINGS

def test_cache_dir(request):
    print(f"CACHE_DIR={request.config.stash[SETTINGS].cache_dir}|")
"""


def _cache_dir(pytester: pytest.Pytester, *args: str) -> Path:
    pytester.makepyfile(test_cache=CACHE_DIR_TEST)
    result = pytester.runpytest("-s", *args)
    result.assert_outcomes(passed=1)
    found = re.search(r"CACHE_DIR=(.*)\|", result.stdout.str())
    assert found, result.stdout.str()
    return Path(found[1])


def test_models_are_cached_inside_pytests_cache_directory(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    assert _cache_dir(pytester) == pytester.path / ".pytest_cache" / "sdmem" / "models"
    elsewhere = tmp_path / "elsewhere"
    assert _cache_dir(pytester, "-o", f"cache_dir={elsewhere}") == elsewhere / "sdmem" / "models"
    assert (_cache_dir(pytester, "-o", "cache_dir=rel/cache")
            == pytester.path / "rel" / "cache" / "sdmem" / "models")
    chosen = tmp_path / "chosen"
    assert _cache_dir(pytester, f"--sdmem-cache-dir={chosen}") == chosen


def test_without_pytests_cache_models_go_to_the_users_cache(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert (_cache_dir(pytester, "-p", "no:cacheprovider")
            == tmp_path / "xdg" / "pytest-sdmem" / "models")
