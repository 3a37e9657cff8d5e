"""The package's layers hold: ``lint-imports`` checks the contracts in pyproject.toml (a layer
imports only the layers below it; only report/ imports matplotlib), so an import cycle or an
upward import fails here, not in a review."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None,
    reason="import-linter is not installed (it is in the `test` extra: pip install -e .[test])",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the checkout at ``root``: its pyproject.toml, its pytest_sdmem."""
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--no-cache", "--config", "pyproject.toml"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_contracts_kept() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def copy_with_import(tmp_path: Path, module: str, imported: str) -> Path:
    """A copy of the checkout whose ``module`` (a path under pytest_sdmem/) also imports
    ``imported``."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "pytest_sdmem", tmp_path / "pytest_sdmem",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "pytest_sdmem" / module
    path.write_text(path.read_text() + f"\nimport {imported}\n")
    return tmp_path


def test_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The check can fail: the statistics importing the estimator is reported."""
    checkout = copy_with_import(tmp_path, "measuring/stats.py", "pytest_sdmem.estimate.run")
    run = lint_imports(checkout)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "pytest_sdmem.measuring.stats -> pytest_sdmem.estimate.run" in run.stdout


def test_a_cycle_between_two_rooms_of_a_layer_breaks_it(tmp_path: Path) -> None:
    """Inside the gate, the budgets importing the verdicts (which import the markers beside
    the budgets) is a cycle the room contract reports."""
    run = lint_imports(copy_with_import(tmp_path, "gate/budgets.py", "pytest_sdmem.gate.verdicts"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "pytest_sdmem.gate.budgets -> pytest_sdmem.gate.verdicts" in run.stdout


def test_the_readme_diagram_is_the_contract() -> None:
    """The README's "How the code is laid out" names the layers, top to bottom, in the order
    the first import-linter contract states them."""
    import re

    from pytest_sdmem.gate.budgets import parse_toml

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How the code is laid out", 1)[1]
    diagram = re.search(r"```text\n(.*?)```", section, re.S)
    assert diagram is not None, "no diagram in the README's layout section"
    shown = [m.group(1) for line in diagram.group(1).splitlines()
             if (m := re.match(r"(?:\S+)?\s+(\w+)(?:/|\.py)\s", line))]
    pyproject = ROOT / "pyproject.toml"
    contract = parse_toml(pyproject.read_text(), pyproject, "project file")["tool"]["importlinter"]
    layers = contract["contracts"][0]["layers"]
    expected = [name.strip().removeprefix("pytest_sdmem.")
                for layer in layers for name in layer.split("|")]
    assert shown == expected
