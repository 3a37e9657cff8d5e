"""Project-wide test setup: the suite runs offline, and synthetic pipelines are built once.

The plugin itself is loaded through its ``pytest11`` entry point (``pip install -e .``); this
file only provides what the project's own tests share.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub: the CI machines have no network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest) -> Path:
    """A model cache shared by the in-process tests and the pytester subprocess runs.

    Building a synthetic pipeline costs seconds; every pytester run pointing here reuses it.
    """
    return Path(request.config.cache.mkdir("sdmem-test-models"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection imported (``gc.freeze``): the garbage collector skips it from now.

    The CPU memory backend walks ``gc.get_objects()`` and runs ``gc.collect()`` several times
    per measured test. After torch and diffusers are imported that is some 430,000 objects,
    about 0.2 s a pass and over a second per measured test, paid by every test a pytester run
    in this process measures. No test has run yet, so nothing measured is hidden: the only
    tensors alive are four lookup tables of diffusers' BFL quantizer (192 bytes, never used
    here); everything the tests allocate is created later and stays in the collector's view.
    """
    gc.collect()
    gc.freeze()
