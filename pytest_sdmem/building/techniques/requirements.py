"""What a technique set needs from this machine: a CUDA device, packages, a torch version, and
what an entry's own probe checks (a compiler for ``compile``); and from the model: a family
each of its techniques applies to."""

from __future__ import annotations

import importlib.util

import torch
from packaging.version import Version

from pytest_sdmem.building.techniques.context import is_cuda
from pytest_sdmem.building.techniques.parse import TechniqueSet


def unmet_requirements(ts: TechniqueSet, device: str) -> list[str]:
    """Why ``ts`` cannot run on ``device`` here, one skip reason per missing thing; empty when
    it can. Each reason names what is missing and how to get it."""
    reasons: list[str] = []
    installed = Version(torch.__version__.split("+")[0])
    for t in ts.techniques:
        if t.requires_cuda and not is_cuda(device):
            reasons.append(f"{t.key} needs a CUDA device: run with --gpu")
        for package in t.requires_packages:
            if importlib.util.find_spec(package) is None:
                reasons.append(f"{package} is not installed (pip install pytest-sdmem[{package}])")
        if t.min_torch is not None and installed < Version(t.min_torch):
            reasons.append(f"{t.key} needs torch >= {t.min_torch}, installed: {torch.__version__}")
        if t.probe is not None and (reason := t.probe(device)) is not None:
            reasons.append(reason)
    return list(dict.fromkeys(reasons))


def family_refusals(ts: TechniqueSet, family: str) -> list[str]:
    """Why techniques of ``ts`` cannot apply to a model of ``family`` (sd1, sd2, sdxl, sd3,
    flux), one reason per technique from its registry entry; empty when all apply."""
    return [f"{t.key} does not apply to {family} models: {reason}"
            for t in ts.techniques if (reason := t.families.reason(family)) is not None]
