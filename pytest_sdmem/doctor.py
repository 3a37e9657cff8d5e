"""Can this machine run the suite? Checked before pytest starts, with everything missing listed.

    python -m pytest_sdmem.doctor [--gpu] [--extra NAME ...]

A GPU machine is often an image prepared elsewhere, without network, with wheels installed by
hand (``--no-deps``): a package diffusers needs at import (``requests``, ``Pillow``,
``safetensors>=0.8``, ...) can be missing, and then every ``sd_pipe`` errors, one test at a
time, after minutes of model building. This reads the requirements the installed
distributions declare (``importlib.metadata``, evaluated with ``packaging`` for this Python
and platform), from this project's down to the last one they need, and checks that each is
installed in an accepted version; then that the main packages import; with ``--gpu``, that a
CUDA device is visible, and what the GPU tier will skip (``compile`` without triton's build
tools) or cannot check (no NVML).

Exit status: 0 ready, 1 something is missing (each listed with what requires it), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

PROJECT = "pytest-sdmem"
#: Imported after the requirements check: a package can be installed and still not import
#: (a wheel for another Python, a CUDA library missing), and diffusers checks its own
#: runtime needs at import.
IMPORTS = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "pytest")


@dataclass(frozen=True)
class Problem:
    """A requirement this environment does not meet."""

    requirement: str
    required_by: str
    installed: str | None  # None: not installed at all

    def __str__(self) -> str:
        found = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.requirement} (required by {self.required_by}): {found}"


#: Distributions whose own requirements are not followed. torch's are its CUDA libraries and
#: triton as pip wheels, which a torch built for the machine (NGC, conda, the system's) takes
#: from elsewhere: ``import torch`` checks what it needs, and the ``compile`` probe says what
#: triton lacks (a skip of the compile tests, not a machine that cannot run the suite).
NOT_FOLLOWED = frozenset({"torch"})

#: One requirement to check: its text, who requires it, and the extras that requirer was
#: asked for (a marker such as ``extra == "nvml"`` holds under them).
Root = tuple[str, str, tuple[str, ...]]


def project_requirements(extras: Iterable[str] = (), root: Path | None = None
                         ) -> tuple[str, list[Root]]:
    """Where this project's requirements come from, and the requirements with ``extras``.

    The checkout's ``pyproject.toml`` when there is one (the GPU scripts run the checkout,
    installed or not), else the installed distribution's metadata. An unknown extra is a
    ``ValueError`` naming the known ones.
    """
    from pytest_sdmem.gate.budgets import parse_toml

    extras = tuple(extras)
    pyproject = (root or Path(__file__).resolve().parents[1]) / "pyproject.toml"
    project = {}
    if pyproject.is_file():
        project = parse_toml(pyproject.read_text(encoding="utf-8"), pyproject,
                             "project file").get("project", {})
    if project.get("name") != PROJECT:
        if root is not None:
            raise ValueError(f"{pyproject} is not the pyproject.toml of {PROJECT}")
        try:
            source = f"{PROJECT} {metadata.version(PROJECT)}"
        except metadata.PackageNotFoundError:
            raise ValueError(f"{PROJECT} is neither installed nor a checkout here") from None
        return source, [(text, source, extras) for text in metadata.requires(PROJECT) or []]
    source, optional = str(pyproject), project.get("optional-dependencies", {})
    roots: list[Root] = [(text, source, ()) for text in project.get("dependencies", [])]
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"no extra {extra!r} in {source} (extras: "
                             f"{', '.join(sorted(optional))})")
        roots += [(text, f"{source} [{extra}]", ()) for text in optional[extra]]
    return source, roots


def requirement_problems(
    roots: Iterable[Root],
    version: Callable[[str], str] = metadata.version,
    requires: Callable[[str], list[str] | None] = metadata.requires,
) -> tuple[list[Problem], int]:
    """Every requirement reachable from ``roots`` that is not installed or not in an accepted
    version, and how many distributions were checked.

    Each installed distribution's own requirements are followed (but ``NOT_FOLLOWED``'s), with
    the extras it was required with; markers are evaluated for this interpreter. ``version``
    and ``requires`` are ``importlib.metadata``'s, parameters so that another environment can
    be described.
    """
    environment = default_environment()
    problems: list[Problem] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = list(roots)
    while queue:
        text, parent, parent_extras = queue.pop(0)
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(Problem(text, parent, f"an unreadable requirement ({exc})"))
            continue
        if req.marker is not None and not any(
                req.marker.evaluate({**environment, "extra": extra})
                for extra in ("", *parent_extras)):
            continue  # another Python, platform or extra
        name = canonicalize_name(req.name)
        try:
            installed = version(name)
        except metadata.PackageNotFoundError:
            problems.append(Problem(str(req), parent, None))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(Problem(str(req), parent, f"{req.name} {installed}"))
        key = (name, frozenset(req.extras))
        if key not in seen and name not in NOT_FOLLOWED:
            seen.add(key)
            by = f"{req.name} {installed}"
            queue += [(child, by, tuple(req.extras)) for child in requires(name) or []]
    return problems, len({name for name, _ in seen})


def import_problems(modules: Iterable[str] = IMPORTS) -> list[str]:
    """The modules that do not import, each with its error's last line."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            problems.append(f"import {module}: {type(exc).__name__}: {exc}".splitlines()[0])
    return problems


def gpu_report() -> tuple[list[str], list[str]]:
    """(problems, notes) of the GPU tier on this machine: no visible CUDA device is a problem;
    what the tier will skip or cannot check is a note."""
    import torch

    from pytest_sdmem.building.techniques import parse_technique, unmet_requirements
    from pytest_sdmem.measuring.memory.cuda import load_nvml

    if not torch.cuda.is_available():
        return [f"no CUDA device is visible to torch {torch.__version__} (CUDA "
                f"{torch.version.cuda}): the GPU tier cannot run"], []
    notes = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if missing := unmet_requirements(parse_technique("compile"), "cuda"):
        notes.append("the compile tests will be skipped: " + "; ".join(missing))
    if load_nvml() is None:
        notes.append("nvidia-ml-py is missing: the session cannot check that the GPU is its "
                     "own, and metric='process' budgets fail (pip install pytest-sdmem[nvml])")
    return [], notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_sdmem.doctor",
        description="Check that this machine can run the pytest-sdmem suite, before pytest.")
    parser.add_argument("--gpu", action="store_true", help="also check for the GPU tier")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME",
                        help="also require the project's extra NAME (e.g. nvml); repeatable")
    parser.add_argument("--project", type=Path, metavar="DIR",
                        help="the checkout whose pyproject.toml to read (default: this one's)")
    args = parser.parse_args(argv)
    try:
        source, roots = project_requirements(args.extra, args.project)
    except (ValueError, OSError) as exc:  # BudgetError (bad TOML) is a ValueError
        parser.error(str(exc))
    problems, checked = requirement_problems(roots)
    print(f"sdmem-doctor: Python {sys.version.split()[0]}; requirements of {source} and "
          f"everything they need: {checked} distributions checked")
    failures = [str(p) for p in problems]
    if not failures:
        failures = import_problems()
    notes: list[str] = []
    if args.gpu and not failures:
        gpu_problems, notes = gpu_report()
        failures += gpu_problems
    for note in notes:
        print(f"  {note}")
    if failures:
        print(f"sdmem-doctor: this machine cannot run the suite ({len(failures)} problem(s)):",
              file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print("sdmem-doctor: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
