"""In-process pytester runs restore ``sys.modules`` afterwards, so whatever an inner run
imports first is imported again by the next one: torch's dynamo (imported by the first dispatch
mode) and diffusers cost seconds each time, and re-importing dynamo re-registers its operator
library and fails. Import them once here, before any inner run. The CPU meter too: the
process keeps one backend per device, and an inner run that imported ``memory.cpu`` again
would find a backend of the old module's class.

The inner runs also get a wide terminal (see ``wide_terminal``)."""

import diffusers  # noqa: F401
import pytest
import torch._dynamo  # noqa: F401

import pytest_sdmem.building.pipelines
import pytest_sdmem.building.runner
import pytest_sdmem.measuring.memory.cpu
import pytest_sdmem.measuring.memory.snapshot  # noqa: F401


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs' terminal is 250 columns wide, so a table row stays on one line for the
    tests that match its cells; the tests of the table's width set ``COLUMNS`` themselves."""
    monkeypatch.setenv("COLUMNS", "250")
