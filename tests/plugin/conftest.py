"""In-process pytester runs restore ``sys.modules`` afterwards, so whatever an inner run
imports first is imported again by the next one: torch's dynamo (imported by the first dispatch
mode) and diffusers cost seconds each time, and re-importing dynamo re-registers its operator
library and fails. Import them once here, before any inner run."""

import diffusers  # noqa: F401
import torch._dynamo  # noqa: F401

import pytest_sdmem.pipelines
import pytest_sdmem.runner  # noqa: F401
