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


def test_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The check can fail: the estimator importing the runner (which runs it) is reported."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "pytest_sdmem", tmp_path / "pytest_sdmem",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run_py = tmp_path / "pytest_sdmem" / "estimate" / "run.py"
    run_py.write_text(run_py.read_text() + "\nfrom pytest_sdmem.building.runner import SdPipe\n")
    run = lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "pytest_sdmem.estimate.run -> pytest_sdmem.building.runner" in run.stdout
