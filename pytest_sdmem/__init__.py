"""pytest-sdmem: memory and speed budgets for diffusers pipelines, stated as pytest markers.

The code is in layers, one folder each (``base``, ``measuring``, ``building``, ``estimate``,
``gate``, ``report``, ``plugin``; see the README's "How the code is laid out"); everything below
``plugin`` is plain Python, usable without pytest.

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
    "SdPipe": "pytest_sdmem.building.runner",  # what the sd_pipe fixture gives on a device
    "EstimatedSdPipe": "pytest_sdmem.estimate.pipe",  # what it gives with --sdmem-estimate
    "make_sd_pipe": "pytest_sdmem.building.runner",  # an SdPipe outside the fixture
    "ImageDiff": "pytest_sdmem.building.runner",  # SdPipe.assert_matches_baseline's result
    "MemoryTracker": "pytest_sdmem.measuring.memory.tracker",  # the cuda_mem_tracker fixture
    "MemoryReport": "pytest_sdmem.measuring.memory.tracker",
    "TimingResult": "pytest_sdmem.measuring.timing",  # SdPipe.latency's result
    "SpeedupResult": "pytest_sdmem.measuring.speedup",  # SdPipe.speedup_over's result
    "parse_technique": "pytest_sdmem.building.techniques",
    "TechniqueError": "pytest_sdmem.base.errors",
    "parse_size": "pytest_sdmem.base.units",
    "format_size": "pytest_sdmem.base.units",
    # The warnings, for filters that stay put when modules move (-W error::pytest_sdmem.X).
    "SdmemLeakWarning": "pytest_sdmem.plugin.leaks",  # memory a test left allocated
    "SdmemMachineWarning": "pytest_sdmem.plugin.machine",  # the GPU is shared, or cold
    "SdmemBaselineWarning": "pytest_sdmem.plugin.session",  # a baseline part not compared
    "CacheWarning": "pytest_sdmem.building.pipelines.cache",  # a cache entry rebuilt
}

__all__ = [  # the names of _PUBLIC, and the version
    "CacheWarning",
    "EstimatedSdPipe",
    "ImageDiff",
    "MemoryReport",
    "MemoryTracker",
    "SdPipe",
    "SdmemBaselineWarning",
    "SdmemLeakWarning",
    "SdmemMachineWarning",
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
    from pytest_sdmem.base.errors import TechniqueError
    from pytest_sdmem.base.units import format_size, parse_size
    from pytest_sdmem.building.pipelines.cache import CacheWarning
    from pytest_sdmem.building.runner import ImageDiff, SdPipe, make_sd_pipe
    from pytest_sdmem.building.techniques import parse_technique
    from pytest_sdmem.estimate.pipe import EstimatedSdPipe
    from pytest_sdmem.measuring.memory.tracker import MemoryReport, MemoryTracker
    from pytest_sdmem.measuring.speedup import SpeedupResult
    from pytest_sdmem.measuring.timing import TimingResult
    from pytest_sdmem.plugin.leaks import SdmemLeakWarning
    from pytest_sdmem.plugin.machine import SdmemMachineWarning
    from pytest_sdmem.plugin.session import SdmemBaselineWarning


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
