"""--sdmem-compare end to end across generation settings: a baseline saved at 32x32 is not
comparable with a run at 64x64 (once "REGRESSED +384.8%"); the same settings are compared; a
baseline of another model family is not comparable either."""

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

#: Generates without measuring: its record still carries the generation settings.
PLAIN_TEST_FILE = """
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
        "family": "sd1", "model": "tiny", "height": 32, "width": 32, "steps": 1, "batch_size": 1,
        "guidance_scale": 7.5, "scheduler": None, "max_sequence_length": None,
        "dtype": "float32", "safety_checker": False}

    result = pytester.runpytest(*common, "--sdmem-size=64", "--sdmem-compare=base.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "Not comparable (figures not compared):",
        "  test_inner.py::test_generate [tiny, none]: generated differently: height 32 in the "
        "baseline, 64 now, width 32 in the baseline, 64 now",
    ])
    assert "REGRESSED" not in result.stdout.str()


def test_every_family_generates_with_its_defaults_and_families_are_not_compared(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    """sd_pipe with each tiny family: its pipeline class, its family's defaults (guidance, T5
    length), the family in the record; a baseline of one family is never compared with
    another's generation of the same test."""
    pytester.makepyfile(test_inner=PLAIN_TEST_FILE)
    common = (f"--sdmem-cache-dir={model_cache}", "--sdmem-steps=1", "--sdmem-size=32")
    expected = {"tiny-sdxl": ("sdxl", 5.0, None), "tiny-sd3": ("sd3", 7.0, 256),
                "tiny-flux": ("flux", 3.5, 512)}
    for model, (family, guidance, length) in expected.items():
        pytester.runpytest(*common, f"--sdmem-model={model}", f"--sdmem-save={model}.json"
                           ).assert_outcomes(passed=1)
        [record] = json.loads((pytester.path / f"{model}.json").read_text())["results"]
        generation = record["generation"]
        assert (generation["family"], generation["guidance_scale"],
                generation["max_sequence_length"], generation["safety_checker"]) == (
            family, guidance, length, False), model

    # The same model name, now a pipeline of another family (a directory that changed).
    saved = json.loads((pytester.path / "tiny-flux.json").read_text())
    saved["results"][0]["generation"]["family"] = "sd3"
    (pytester.path / "other.json").write_text(json.dumps(saved))
    result = pytester.runpytest(*common, "--sdmem-model=tiny-flux", "--sdmem-compare=other.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "Not comparable (figures not compared):",
        "  test_inner.py::test_generate [tiny-flux, none]: generated differently: family 'sd3' "
        "in the baseline, 'flux' now",
    ])


def test_an_unknown_model_lists_every_synthetic_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=TEST_FILE)
    result = pytester.runpytest("--sdmem-model=no/such/model")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no/such/model*no such file or directory*tiny, sd15, sd21, "
                                 "sd21-base, sdxl, sd3, flux-dev, flux-schnell, tiny-sdxl, "
                                 "tiny-sd3, tiny-flux*"])
