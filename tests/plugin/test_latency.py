"""``sd_pipe.latency()`` end to end: its breakdown reaches the results file, the JUnit
properties and the session table's "per step" column."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_sdmem.measuring.timing import BREAKDOWN_FIGURES


def test_the_breakdown_is_recorded_reported_and_tabled(pytester: pytest.Pytester,
                                                       model_cache: Path) -> None:
    pytester.makepyfile(
        """
        def test_latency(sd_pipe):
            sd_pipe.latency(max_time=0.1, warmup=1, min_rounds=1)
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "--sdmem-size=32",
                                "--sdmem-json=r.json", "--junitxml=j.xml")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"test +technique +device +latency +per step +speed-up .*",
                                  r".*::test_latency +none +cpu +\S+ m?s +\S+ m?s +- .*"])
    latency = json.loads((pytester.path / "r.json").read_text())["results"][0]["latency"]
    for name in BREAKDOWN_FIGURES:
        assert latency[name] > 0, name
    assert latency["per_step"] * 2 <= latency["median"]  # 2 steps: the tiny model's default
    props = {p.get("name"): float(p.get("value") or "nan")
             for p in ET.parse(pytester.path / "j.xml").iter("property")
             if (p.get("name") or "").startswith("sdmem_latency_")}
    # The interval's ends only with the rounds for one (6, on a quiet machine).
    names = ("median", "ci_low", "ci_high", *BREAKDOWN_FIGURES)
    assert props == {f"sdmem_latency_{name}_s": pytest.approx(latency[name])
                     for name in names if latency[name] is not None}
    assert {f"sdmem_latency_{name}_s" for name in BREAKDOWN_FIGURES} <= set(props)
