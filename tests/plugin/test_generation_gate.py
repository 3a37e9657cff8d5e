"""--sdmem-compare end to end across generation settings: a baseline saved at 32x32 is not
comparable with a run at 64x64 (once "REGRESSED +384.8%"); the same settings are compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEST_FILE = """
import pytest

@pytest.mark.max_vram("1GB")
def test_generate(sd_pipe):
    sd_pipe()
"""


def test_a_baseline_of_another_size_is_not_comparable(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    pytester.makepyfile(test_inner=TEST_FILE)
    common = (f"--sdmem-cache-dir={model_cache}", "--sdmem-steps=1")
    pytester.runpytest(*common, "--sdmem-size=32", "--sdmem-save=base.json").assert_outcomes(
        passed=1)
    [record] = json.loads((pytester.path / "base.json").read_text())["results"]
    assert record["generation"] == {
        "model": "tiny", "height": 32, "width": 32, "steps": 1, "batch_size": 1,
        "guidance_scale": 7.5, "scheduler": None, "dtype": "float32", "safety_checker": False}

    result = pytester.runpytest(*common, "--sdmem-size=64", "--sdmem-compare=base.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "Not comparable (figures not compared):",
        "  test_inner.py::test_generate [tiny, none]: generated differently: height 32 in the "
        "baseline, 64 now, width 32 in the baseline, 64 now",
    ])
    assert "REGRESSED" not in result.stdout.str()
