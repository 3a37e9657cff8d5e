"""Project-wide test setup: the suite runs offline, and synthetic pipelines are built once.

The plugin itself is loaded through its ``pytest11`` entry point (``pip install -e .``); this
file only provides what the project's own tests share.
"""

from __future__ import annotations

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
