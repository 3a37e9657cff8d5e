"""Installing pytest-sdmem leaves an installed torch alone, whatever its version.

A throwaway virtual environment holds a stand-in ``torch 2.15.0`` (its metadata only, newer than
any torch this project was written against) beside the other dependencies at the versions of
this environment (their metadata, copied). pip then plans ``pip install pytest-sdmem`` into it,
as a user would, offline: the plan must install pytest-sdmem and nothing else. A version cap on
torch in pyproject.toml (or in anything it pulls in) makes pip want another torch: with no index
to take one from, the plan fails and names the conflict.

The project's wheel here is its metadata too, written from pyproject.toml's dependency list
(what setuptools copies into a built wheel verbatim), so no build backend is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
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


def project_wheel(directory: Path) -> list[Requirement]:
    """Write into ``directory`` a wheel declaring pyproject.toml's dependencies; return those
    that apply on this interpreter."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
             f"Requires-Python: {project['requires-python']}"]
    lines += [f"Requires-Dist: {req}" for req in requirements]
    info = f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    wheel = directory / f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{info}/METADATA", "\n".join(lines) + "\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def pip_env() -> dict[str, str]:
    """No pip configuration of this machine (indexes, find-links, constraints) applies, and no
    PYTHONPATH: a checkout on it (with its egg-info) would count as pytest-sdmem installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def test_installing_the_plugin_keeps_a_newer_torch(tmp_path: Path) -> None:
    try:
        import pip  # noqa: F401  (pip's --python option runs this pip against the venv below)
    except ImportError:
        pytest.skip("pip is not installed in this environment")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    paths = {"base": str(env_dir), "platbase": str(env_dir)}
    site = Path(sysconfig.get_path("purelib", scheme, paths))
    python = Path(sysconfig.get_path("scripts", scheme, paths)) / Path(sys.executable).name
    dist_info(site, "torch", STAND_IN_TORCH,
              f"Metadata-Version: 2.1\nName: torch\nVersion: {STAND_IN_TORCH}\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    requirements = project_wheel(wheels)
    copy_installed_closure(site, requirements)

    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
         "--quiet", "--report", str(report), "--no-index", "--find-links", str(wheels),
         "pytest-sdmem"],
        capture_output=True, text=True, env=pip_env(), timeout=120, check=False,
    )
    assert proc.returncode == 0, f"pip cannot plan the install:\n{proc.stdout}{proc.stderr}"
    plan = json.loads(report.read_text(encoding="utf-8"))["install"]
    assert [(p["metadata"]["name"], p["metadata"]["version"]) for p in plan] == [
        ("pytest-sdmem", "0.1.0")]
