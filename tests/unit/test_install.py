"""Installing pytest-sdmem leaves an installed torch alone, whatever its version.

A throwaway virtual environment holds a stand-in ``torch 2.15.0`` (its metadata only, newer than
any torch this project was written against) beside the other dependencies at the versions of
this environment (their metadata, copied). pip then plans ``pip install pytest-sdmem`` into it,
as a user would, offline: the plan must install pytest-sdmem and nothing else. A version cap on
torch in pyproject.toml (or in anything it pulls in) makes pip want another torch: with no index
to take one from, the plan fails and names the conflict.

The project's wheel here is its metadata too, written from pyproject.toml's dependency list
(what setuptools copies into a built wheel verbatim), so no build backend is needed.

The workflow's CPU job checks its own install plan with .ci/check_install_plan.py; it is run
here on real pip reports: this one, and one that plans a torch with a CUDA wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest_sdmem

PROJECT = Path(pytest_sdmem.__file__).resolve().parents[1]
CHECK_PLAN = PROJECT / ".ci" / "check_install_plan.py"
STAND_IN_TORCH = "2.15.0"


def dist_info(site: Path, name: str, version: str, metadata_text: str) -> None:
    """An installed distribution as pip reads it: a dist-info folder with METADATA."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(metadata_text, encoding="utf-8")
    (folder / "INSTALLER").write_text("pip\n", encoding="utf-8")
    (folder / "RECORD").write_text("", encoding="utf-8")


def runtime_requirements(dist: metadata.Distribution) -> list[Requirement]:
    """What installing ``dist`` (no extras) needs on this interpreter."""
    reqs = [Requirement(line) for line in dist.requires or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def copy_installed_closure(site: Path, requirements: list[Requirement]) -> None:
    """Copy the metadata of every installed distribution these requirements pull in, except
    torch, whose stand-in is written instead."""
    seen = {"torch"}
    pending = list(requirements)
    while pending:
        name = canonicalize_name(pending.pop().name)
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        dist_info(site, name, dist.version, dist.read_text("METADATA") or "")
        pending += runtime_requirements(dist)


def write_wheel(directory: Path, name: str, version: str, requires: list[str]) -> None:
    """A wheel that is its metadata only: all pip reads to plan an install."""
    stem = f"{name.replace('-', '_')}-{version}"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in requires]
    with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{stem}.dist-info/METADATA", "\n".join(lines) + "\n")
        archive.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{stem}.dist-info/RECORD", "")


def project_wheel(directory: Path) -> list[Requirement]:
    """Write into ``directory`` a wheel declaring pyproject.toml's dependencies; return those
    that apply on this interpreter."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    write_wheel(directory, project["name"], pytest_sdmem.__version__, project["dependencies"])
    requirements = [Requirement(line) for line in project["dependencies"]]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def pip_env() -> dict[str, str]:
    """No pip configuration of this machine (indexes, find-links, constraints) applies, and no
    PYTHONPATH: a checkout on it (with its egg-info) would count as pytest-sdmem installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


@dataclass
class Target:
    """A throwaway environment holding the stand-in torch, and the wheels pip may take."""

    python: Path
    wheels: Path

    def plan(self, *requirements: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        """``pip install --dry-run --report`` of ``requirements`` into the environment, offline."""
        report = self.wheels.parent / "report.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), "install", "--dry-run",
             "--quiet", "--report", str(report), "--no-index", "--find-links", str(self.wheels),
             *requirements],
            capture_output=True, text=True, env=pip_env(), timeout=120, check=False,
        )
        return proc, report


@pytest.fixture
def target(tmp_path: Path) -> Target:
    try:
        import pip  # noqa: F401  (pip's --python option runs this pip against the venv below)
    except ImportError:
        pytest.skip("pip is not installed in this environment")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    paths = {"base": str(env_dir), "platbase": str(env_dir)}
    site = Path(sysconfig.get_path("purelib", scheme, paths))
    dist_info(site, "torch", STAND_IN_TORCH,
              f"Metadata-Version: 2.1\nName: torch\nVersion: {STAND_IN_TORCH}\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    copy_installed_closure(site, project_wheel(wheels))
    python = Path(sysconfig.get_path("scripts", scheme, paths)) / Path(sys.executable).name
    return Target(python, wheels)


def check_plan(report: Path) -> subprocess.CompletedProcess[str]:
    """The workflow's check of its CPU job's install plan."""
    return subprocess.run([sys.executable, str(CHECK_PLAN), str(report)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_installing_the_plugin_keeps_a_newer_torch(target: Target) -> None:
    proc, report = target.plan("pytest-sdmem")
    assert proc.returncode == 0, f"pip cannot plan the install:\n{proc.stdout}{proc.stderr}"
    plan = json.loads(report.read_text(encoding="utf-8"))["install"]
    assert [(p["metadata"]["name"], p["metadata"]["version"]) for p in plan] == [
        ("pytest-sdmem", pytest_sdmem.__version__)]
    check = check_plan(report)
    assert check.returncode == 0, check.stderr
    assert "install plan: 1 distributions, no torch and no CUDA wheel" in check.stdout


def test_the_ci_plan_check_names_a_torch_and_cuda_wheels(target: Target) -> None:
    write_wheel(target.wheels, "torch", "2.14.0", ["nvidia-cublas-cu12==12.8.4"])
    write_wheel(target.wheels, "nvidia-cublas-cu12", "12.8.4", [])
    proc, report = target.plan("pytest-sdmem", "torch==2.14.0")
    assert proc.returncode == 0, proc.stderr
    check = check_plan(report)
    assert check.returncode == 1
    named = check.stderr.rpartition("on a CPU runner: ")[2].strip().split(", ")
    assert sorted(named) == ["nvidia-cublas-cu12==12.8.4", "torch==2.14.0"]
    report.write_text("{}", encoding="utf-8")
    unreadable = check_plan(report)
    assert unreadable.returncode == 2
    assert f"cannot read a pip report from {report}" in unreadable.stderr
