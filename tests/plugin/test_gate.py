"""The regression gate end to end: save a baseline, change what a test allocates, compare.

Real allocations: the inner test allocates ``SIZE`` bytes read from the environment, so the
same test file allocates once as much, then twice as much, between the two runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEST_FILE = """
import os, pytest, torch

@pytest.mark.max_vram("1GB")
def test_alloc():
    x = torch.ones(int(os.environ["SDMEM_TEST_SIZE"]), dtype=torch.uint8)

@pytest.mark.max_vram("1GB")
def test_steady():
    x = torch.ones(2**20, dtype=torch.uint8)
"""


@pytest.fixture
def baseline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makepyfile(test_inner_gate=TEST_FILE)
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(32 * 2**20))
    saved = pytester.runpytest("--sdmem-save=base/baseline.json")
    saved.assert_outcomes(passed=2)
    saved.stdout.fnmatch_lines(["sdmem: wrote baseline base*baseline.json (2 records); "
                                "compare a later run with --sdmem-compare *"])
    path = pytester.path / "base" / "baseline.json"
    assert json.loads(path.read_text())["schema_version"] == 1
    return path


def test_doubling_fails_the_test_with_the_figures(
    pytester: pytest.Pytester, baseline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = baseline.read_bytes()
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(64 * 2**20))
    result = pytester.runpytest(f"--sdmem-compare={baseline}", "-rA", "-vv",
                                "--junitxml=j.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "REGRESSED test_inner_gate.py::test_alloc - regressed against baseline *baseline.json: "
        "peak_allocated 67.* MB vs baseline 33.* MB (+33.* MB, +*%) exceeds tolerance 5%*",
    ])
    assert baseline.read_bytes() == before, "a compare run must never modify the baseline"


def test_within_tolerance_passes_and_improvements_are_reported(
    pytester: pytest.Pytester, baseline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(33 * 2**20))  # +3%: inside the default 5%
    pytester.runpytest(f"--sdmem-compare={baseline}").assert_outcomes(passed=2)
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(8 * 2**20))
    result = pytester.runpytest(f"--sdmem-compare={baseline}", "--sdmem-tolerance=vram=10%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*improved beyond tolerance 10%: refresh the baseline*"])
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(40 * 2**20))  # +25%, allowed by an absolute 10MB
    result = pytester.runpytest(f"--sdmem-compare={baseline}", "--sdmem-tolerance=vram=10MB")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"schema_version": 1, "results": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"schema_version": 99, "environment": {}, "results": []}', "schema_version 99"),
        (b'{"some": "other file"}', "not a pytest-sdmem results file"),
        (b"\xff\xfe garbage", "can't decode"),
    ],
)
def test_a_bad_baseline_is_a_usage_error_and_stays_untouched(
    pytester: pytest.Pytester, content: bytes, problem: str
) -> None:
    pytester.makepyfile(test_inner_gate=TEST_FILE)
    path = pytester.path / "bad.json"
    path.write_bytes(content)
    result = pytester.runpytest("--sdmem-compare=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-sdmem: *bad.json*{problem}*"])
    assert path.read_bytes() == content


def test_a_missing_baseline_says_how_to_record_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_gate=TEST_FILE)
    result = pytester.runpytest("--sdmem-compare=missing.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sdmem-compare missing.json: no such file*--sdmem-save*"])


def test_another_card_is_not_compared_but_warned(
    pytester: pytest.Pytester, baseline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = json.loads(baseline.read_text())
    data["environment"]["device_name"] = "NVIDIA A10G"
    for record in data["results"]:
        record["device_name"] = "NVIDIA A10G"
    other = pytester.path / "other.json"
    other.write_text(json.dumps(data))
    monkeypatch.setenv("SDMEM_TEST_SIZE", str(64 * 2**20))
    result = pytester.runpytest(f"--sdmem-compare={other}", "-W", "default")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines([
        "*SdmemBaselineWarning: baseline *other.json was recorded on 'NVIDIA A10G'*",
        "*not compared*",
    ])


def test_new_and_gone_tests_are_listed_and_the_step_summary_written(
    pytester: pytest.Pytester, baseline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner_gate="""
import pytest, torch

@pytest.mark.max_vram("1GB")
def test_brand_new():
    x = torch.ones(2**20, dtype=torch.uint8)
""")
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest(f"--sdmem-compare={baseline}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines_random(["*test_brand_new*", "*test_alloc*", "*new*", "*gone*"])
    text = summary.read_text()
    assert "| test_inner_gate.py::test_brand_new |" in text.replace("\\_", "_")
    assert "baseline" in text

