"""The plugin's fixtures: thin wrappers that hand the core's objects to tests.

``cuda_mem_tracker`` is a ``MemoryTracker`` on the session's device (the exact CPU accounting on
a CPU run); ``sd_pipe`` is an ``SdPipe`` holding a fresh pipeline with the test's technique.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_sdmem.measuring.memory import MemoryTracker, get_backend
from pytest_sdmem.plugin.session import session_of
from pytest_sdmem.plugin.state import STATE, technique_of

if TYPE_CHECKING:
    from pytest_sdmem.building.runner import SdPipe
    from pytest_sdmem.estimate.pipe import EstimatedSdPipe


@pytest.fixture
def cuda_mem_tracker(request: pytest.FixtureRequest) -> Iterator[MemoryTracker]:
    """Peak memory of ``with cuda_mem_tracker as m:`` blocks on the session's device.

    A ``max_vram`` budget applies to the highest peak among the blocks when a test uses them.
    """
    tracker = MemoryTracker(get_backend(session_of(request.config).settings.device))
    state = request.node.stash.get(STATE, None)
    if state is not None:
        state.trackers.append(tracker)
    yield tracker
    if tracker.measuring:
        tracker.stop()


@pytest.fixture
def sd_pipe(request: pytest.FixtureRequest) -> Iterator[SdPipe | EstimatedSdPipe]:
    """A real pipeline of ``--sdmem-model``'s family (StableDiffusionPipeline,
    StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline) with the test's
    technique applied, released at teardown; its generations default to the family's settings.

    Select the technique with ``@pytest.mark.parametrize("sd_pipe", [...], indirect=True)`` or
    ``@pytest.mark.sd_technique("fp16+vae_slicing")``; the default is ``none``.
    """
    # Imported here: diffusers takes seconds to import, and a run without sd_pipe needs none of it.
    from pytest_sdmem.building.generation import generation_defaults
    from pytest_sdmem.building.pipelines import ModelError
    from pytest_sdmem.building.runner import UnmetRequirementError
    from pytest_sdmem.building.techniques import TechniqueError

    session = session_of(request.config)
    settings = session.settings
    technique = technique_of(request.node)
    try:
        defaults = generation_defaults(settings.model, steps=settings.steps,
                                       size=settings.image_size)
        pipe = session.mode.build_pipe(technique, defaults)
    except UnmetRequirementError as exc:  # normally skipped at collection already
        pytest.skip("; ".join(exc.reasons))
    except (ModelError, TechniqueError) as exc:  # a technique the model cannot take, too
        failure = str(exc)
    else:
        failure = None
    if failure is not None:  # failed outside the except: pytest would print the chained error
        pytest.fail(failure, pytrace=False)
    state = request.node.stash.get(STATE, None)
    if state is not None:
        state.sd_pipe = pipe
    try:
        yield pipe
    finally:
        if state is not None:
            state.sd_pipe = None
        pipe.release()
