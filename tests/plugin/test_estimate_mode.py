"""``--sdmem-estimate`` end to end: budgets checked against the estimated CUDA peak, and what
needs a real run skipped with the reason (on ``tiny``, to keep it fast; sd15 is in tests/unit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_budgets_against_the_estimate(pytester: pytest.Pytester, model_cache: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.max_vram("1GB")
        @pytest.mark.sd_technique("fp16")
        def test_fits(sd_pipe):
            images = sd_pipe(batch_size=2)
            assert images.shape == (2, 64, 64, 3)

        @pytest.mark.max_vram("1KB")
        def test_too_small(sd_pipe):
            sd_pipe()

        def test_looks_at_pixels(sd_pipe):
            assert sd_pipe().mean() > 0

        @pytest.mark.min_speedup(1.5)
        def test_speed(sd_pipe):
            sd_pipe()

        @pytest.mark.sd_technique("jit_trace")
        def test_traced(sd_pipe):
            sd_pipe()

        @pytest.mark.max_vram("1GB")
        def test_no_pipeline():
            pass
        """
    )
    result = pytester.runpytest("--sdmem-estimate", "--sdmem-model=tiny", "-rA", "-vv",
                                f"--sdmem-cache-dir={model_cache}", "--sdmem-json=r.json")
    result.assert_outcomes(passed=1, failed=1, skipped=4)
    result.stdout.fnmatch_lines_random([
        "VRAM *test_too_small - peak VRAM * (allocated, cuda (estimated)*) exceeded max_vram "
        "1.00 KB*",
        "SKIPPED *the images of an estimated generation have no pixels*",
        "SKIPPED *min_speedup needs real timings*",
        "SKIPPED *cannot estimate 'jit_trace'*",
        "SKIPPED *estimates sd_pipe generations, and this test has none*",
        "*test_fits*(est.)*",
    ])
    records = {r["nodeid"].split("::")[1]: r
               for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    fits = records["test_fits"]
    assert fits["estimated"] is True and fits["technique"] == "fp16"
    assert fits["estimate"]["estimated_allocated_bytes"] == fits["memory"]["peak_allocated_bytes"]
    assert fits["estimate"]["generation"]["batch_size"] == 2


def test_a_skip_for_pixels_never_hides_an_estimate_over_budget(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    pytester.makepyfile(
        """
        import numpy as np
        import pytest

        @pytest.mark.max_vram("1KB")
        def test_over_then_pixels(sd_pipe):
            assert np.isfinite(sd_pipe()).all()

        @pytest.mark.max_vram("1GB")
        def test_within_then_pixels(sd_pipe):
            assert np.isfinite(sd_pipe()).all()

        def test_pipeline_object(sd_pipe):
            sd_pipe.pipe.unet
        """
    )
    result = pytester.runpytest("--sdmem-estimate", "--sdmem-model=tiny", "-rA", "-vv",
                                f"--sdmem-cache-dir={model_cache}")
    result.assert_outcomes(failed=1, skipped=2)
    result.stdout.fnmatch_lines_random([
        "VRAM *test_over_then_pixels - peak VRAM * exceeded max_vram 1.00 KB*",
        "SKIPPED *no pixels*(its peak VRAM * within max_vram 1.00 GB)",
        "SKIPPED *sd_pipe.pipe*needs a real run*",
    ])
