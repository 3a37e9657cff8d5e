"""``min_speedup`` end to end on the tiny pipeline: paired rounds, verdicts, figures, errors.

``none`` against ``none`` has a true ratio of 1, so ``min_speedup(0.5)`` must pass and
``min_speedup(2.0)`` must fail, whatever the machine's load. The budget (60 s) only has to hold
the first looks' 3 pairs on a loaded machine: clear claims settle there, so a quiet machine
spends a few seconds.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest


def test_none_against_none(pytester: pytest.Pytester, model_cache: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.min_speedup(0.5)
        def test_half(sd_pipe):
            sd_pipe()

        @pytest.mark.min_speedup(2.0, baseline="none")
        def test_double(sd_pipe):
            sd_pipe()
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "--sdmem-max-time=60",
                                "-rA", "-vv", "--sdmem-json=r.json", "--junitxml=j.xml")
    result.assert_outcomes(passed=1, failed=1)
    # Below, or (when a loaded machine leaves the interval wide) inconclusive: both fail.
    result.stdout.re_match_lines([
        r"SLOW .*::test_double - speedup \d\.\d\dx \((\d+\.\d+% CI \d\.\d\d-\d\.\d\d, "
        r"(t-test on log-ratios|sign test, heavy-tailed)|no interval: .*), \d+ pairs\) "
        r"(below|inconclusive for) min_speedup 2\.00x against 'none'.* \(median .* vs .*\)",
    ])
    result.stdout.fnmatch_lines(["*sdmem: speed-up*"])
    data = json.loads((pytester.path / "r.json").read_text())
    by_name = {r["nodeid"].split("::")[1]: r for r in data["results"]}
    for name, verdicts in (("test_half", {"pass"}), ("test_double", {"fail", "inconclusive"})):
        speedup = by_name[name]["speedup"]
        assert speedup["verdict"] in verdicts
        assert speedup["pairs"] >= 3 and speedup["method"] in {"t", "sign", "none"}
        if speedup["ci_low"] is not None:  # a loaded machine may end without an interval
            assert speedup["ci_low"] <= speedup["ratio"] <= speedup["ci_high"]
        assert by_name[name]["latency"]["median"] > 0
    props = {(c.get("name"), p.get("name")): p.get("value")
             for c in ET.parse(pytester.path / "j.xml").iter("testcase")
             for p in c.iter("property")}
    assert props[("test_double", "sdmem_speedup_verdict")] in {"fail", "inconclusive"}
    assert float(props[("test_half", "sdmem_speedup")]) > 0.5


def test_a_budget_too_short_fails_before_timing(pytester: pytest.Pytester,
                                              model_cache: Path) -> None:
    """A tiny generation takes far more than 10 ms on the CPU: 3 pairs cannot fit in 0.05 s.
    The test fails naming the budget that would do, with no traceback and no timed pair."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.min_speedup(0.5)
        def test_half(sd_pipe):
            sd_pipe()
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "--sdmem-max-time=0.05",
                                "-rA", "--sdmem-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([
        r"min_speedup against 'none': a speed-up verdict needs at least "
        r"3 timed pairs, about .* but the time budget is 50\.0 ms: no verdict could be reached\. "
        r"Set --sdmem-max-time \d+ or more",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()
    record = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert record["speedup"] is None


def test_min_speedup_arguments_are_checked_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.min_speedup("fast")
        def test_factor(sd_pipe):
            pass

        @pytest.mark.min_speedup(0)
        def test_zero(sd_pipe):
            pass

        @pytest.mark.min_speedup(2, baseline="warp_drive")
        def test_baseline(sd_pipe):
            pass

        @pytest.mark.min_speedup(2)
        def test_no_pipe():
            pass
        """
    )
    result = pytester.runpytest("-rA")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random([
        "*test_factor*factor 'fast' is not a number; accepted: a positive number*",
        "*test_zero*factor 0 is not positive*",
        "*test_baseline*unknown technique 'warp_drive'*",
        "*test_no_pipe*must use the sd_pipe fixture*",
    ])
