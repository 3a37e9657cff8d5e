"""pytest-benchmark over ``sd_pipe``: its storage and comparison work for pipeline latency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_benchmark_fixture_times_sd_pipe_generations(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    pytester.makepyfile(
        """
        def test_latency(benchmark, sd_pipe):
            images = benchmark.pedantic(sd_pipe, kwargs={"batch_size": 1}, rounds=3,
                                        warmup_rounds=1)
            assert images.shape == (1, 64, 64, 3)
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "--benchmark-json=b.json")
    result.assert_outcomes(passed=1)
    bench = json.loads((pytester.path / "b.json").read_text())["benchmarks"][0]
    assert bench["stats"]["rounds"] == 3 and bench["stats"]["median"] > 0
