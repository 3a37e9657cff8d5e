"""README is the user's manual: every option and technique the code has must be documented."""

from __future__ import annotations

from pathlib import Path

from pytest_sdmem.options import OPTIONS
from pytest_sdmem.techniques import PRESETS, REGISTRY

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_option_is_documented() -> None:
    missing = [o.flag for o in OPTIONS if o.flag not in README]
    assert not missing, f"options missing from README: {missing}"


def test_every_technique_and_preset_is_documented() -> None:
    missing = [name for name in [*REGISTRY, *PRESETS] if f"`{name}" not in README]
    assert not missing, f"techniques missing from README: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text(encoding="utf-8")
    command = "python -m pytest tests"
    assert f"\n{command}\n" in README and f"\n{command}\n" in ci
