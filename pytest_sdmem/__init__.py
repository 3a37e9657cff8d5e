"""pytest-sdmem: memory and speed budgets for diffusers pipelines, stated as pytest markers.

The measuring core (``memory``, ``timing``, ``stats``, ``pipelines``, ``techniques``) is plain
Python; ``plugin`` and ``fixtures`` are the thin pytest glue over it.

What a test author imports is importable from here (``from pytest_sdmem import SdPipe``). The
names resolve on first use (module ``__getattr__``), so ``import pytest_sdmem`` imports neither
torch nor diffusers: pytest imports this package in every run of a project that has the plugin
installed, whether or not a test uses it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "SdPipe": "pytest_sdmem.runner",  # what the sd_pipe fixture gives on a device
    "EstimatedSdPipe": "pytest_sdmem.runner",  # what it gives with --sdmem-estimate
    "make_sd_pipe": "pytest_sdmem.runner",  # an SdPipe outside the fixture
    "ImageDiff": "pytest_sdmem.runner",  # SdPipe.assert_matches_baseline's result
    "MemoryTracker": "pytest_sdmem.memory.tracker",  # the cuda_mem_tracker fixture
    "MemoryReport": "pytest_sdmem.memory.tracker",
    "TimingResult": "pytest_sdmem.timing",  # SdPipe.latency's result
    "SpeedupResult": "pytest_sdmem.stats",  # SdPipe.speedup_over's result
    "parse_technique": "pytest_sdmem.techniques",
    "TechniqueError": "pytest_sdmem.errors",
    "parse_size": "pytest_sdmem.units",
    "format_size": "pytest_sdmem.units",
}

__all__ = [  # the names of _PUBLIC, and the version
    "EstimatedSdPipe",
    "ImageDiff",
    "MemoryReport",
    "MemoryTracker",
    "SdPipe",
    "SpeedupResult",
    "TechniqueError",
    "TimingResult",
    "__version__",
    "format_size",
    "make_sd_pipe",
    "parse_size",
    "parse_technique",
]

if TYPE_CHECKING:  # what type checkers and editors see in place of __getattr__
    from pytest_sdmem.errors import TechniqueError
    from pytest_sdmem.memory.tracker import MemoryReport, MemoryTracker
    from pytest_sdmem.runner import EstimatedSdPipe, ImageDiff, SdPipe, make_sd_pipe
    from pytest_sdmem.stats import SpeedupResult
    from pytest_sdmem.techniques import parse_technique
    from pytest_sdmem.timing import TimingResult
    from pytest_sdmem.units import format_size, parse_size


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, then keep the name here."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
