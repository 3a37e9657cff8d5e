"""Fixtures and collection rules of the technique suite.

The suite runs against the session's ``--sdmem-model``, of any family. A test whose claim is
about some families only (SD 1.5's budgets, one UNet step with SD 1.x's inputs, a figure of
diffusers' Flux docs) says so with ``@pytest.mark.sd_family("sd1", ...)`` and is skipped, with
the reason, in a session of another family. Under ``--sdmem-estimate``, a family the estimator
cannot follow yet is skipped with the estimator's own error, found by estimating the family's
tiny model once.
"""

from __future__ import annotations

import functools

import pytest

from pytest_sdmem.measuring.memory import MemoryTracker
from pytest_sdmem.plugin.session import session_of


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sd_family(*families): the test's claim is about these model families "
        "(sd1, sd2, sdxl, sd3, flux); skipped in a session of another --sdmem-model family")


@functools.cache
def _family(model: str) -> str:
    from pytest_sdmem.building.pipelines import family_of  # imports diffusers

    return family_of(model)


@functools.cache
def estimator_problem(family: str) -> str | None:
    """Why ``--sdmem-estimate`` cannot estimate ``family``'s models on this branch (None: it
    can): its error on one small generation of the family's tiny model."""
    from pytest_sdmem.building.generation import generation_defaults
    from pytest_sdmem.building.pipelines import TINY_MODELS
    from pytest_sdmem.estimate import estimate_generation

    model = TINY_MODELS[family]
    try:
        estimate_generation(model, "none", generation_defaults(model, steps=1, size=32),
                            safety_checker=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the estimator cannot follow it
        return (f"--sdmem-estimate cannot estimate {family} models yet: {model} fails with "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return None


@pytest.hookimpl(trylast=True)  # after the plugin's: its skip reasons (a refused technique) first
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = session_of(config).settings
    for item in items:
        if "sd_pipe" not in getattr(item, "fixturenames", ()):
            if settings.estimate:  # real generations of the tiny families, no budget
                item.add_marker(pytest.mark.skip(
                    reason="generates for real and has no budget: nothing for "
                           "--sdmem-estimate to estimate"))
            continue
        family = _family(settings.model)
        marker = item.get_closest_marker("sd_family")
        if marker is not None and family not in marker.args:
            item.add_marker(pytest.mark.skip(
                reason=f"a claim about {', '.join(marker.args)} models; this session's "
                       f"--sdmem-model {settings.model} is {family}"))
        elif settings.estimate and (problem := estimator_problem(family)) is not None:
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture
def baseline_mem_tracker(cuda_mem_tracker: MemoryTracker) -> MemoryTracker:
    """A second tracker on the session's device, for the blocks of the baseline a technique is
    compared with.

    The test's own figure (its budget, its row in the session table and the results file) is
    the highest block of ``cuda_mem_tracker``: measuring the baseline there would make the
    classic attention's peak the row of ``sdpa``.
    """
    return MemoryTracker(cuda_mem_tracker.backend)
