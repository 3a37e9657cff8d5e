"""How long ``min_speedup`` needs to reach a verdict, and how wide its interval is, next to what
the same time budget gives with pytest-benchmark's default calibration.

Not a pass/fail test: it prints a markdown table (machine, date, load) for the README's
performance section. The workload is a fixed amount of real computation whose true ratio is
known: ``test`` does N single-threaded torch matmuls, ``base`` does 2N of the same, so the test
is ~2x faster. (It runs on these generic callables rather than the ``tiny`` pipeline because
``pytest_sdmem.pipelines.load_pipeline`` does not exist yet; swapping ``work`` for two pipeline
calls is the only change needed.)

For each claimed factor, ``measure_speedup`` runs ``--repeats`` times; then pytest-benchmark
(run as users run it: ``pytest --benchmark-json``, default calibration, ``--benchmark-max-time``
set to half of min_speedup's median time per callable, the callables benchmarked one after the
other) measures the same two callables as often, and its ratio is the ratio of the medians.

    PYTHONPATH=. python benchmarks/speedup_verdict.py [--repeats 10] [--factors 1.5 1.8 3.0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from pytest_sdmem.stats import SpeedupResult
from pytest_sdmem.timing import measure_speedup
from pytest_sdmem.units import format_duration

MATMULS_PER_UNIT = 20
_A = torch.randn(128, 128)
# One thread, here and in the pytest-benchmark run that imports this module: the neighbours'
# work, not our own threads competing with each other, should be the noise.
torch.set_num_threads(1)

# The pytest-benchmark side, as a user writes it; {budget} is filled in per claimed factor.
BENCH_TEST = """
import pytest
from speedup_verdict import work

@pytest.mark.parametrize("which", ["base", "test"])
@pytest.mark.parametrize("rep", range({repeats}))
def test_work(benchmark, rep, which):
    benchmark(work(2 if which == "base" else 1))
"""


def work(units: int) -> Callable[[], None]:
    """``units`` times a fixed batch of 128x128 matmuls on one thread (about 0.6 ms a unit here)."""

    def run() -> None:
        for _ in range(units * MATMULS_PER_UNIT):
            torch.mm(_A, _A)

    return run


def pytest_benchmark_ratios(repeats: int, budget: float) -> list[dict[str, float]]:
    """Run pytest-benchmark on base and test ``repeats`` times with ``budget`` s per callable."""
    with tempfile.TemporaryDirectory() as tmp:
        test_file = Path(tmp, "test_bench.py")
        test_file.write_text(BENCH_TEST.format(repeats=repeats))
        out = Path(tmp, "bench.json")
        here = Path(__file__).resolve().parent
        paths = [str(here), str(here.parent), os.environ.get("PYTHONPATH", "")]
        run = subprocess.run(
            [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
             "-p", "no:sdmem", f"--rootdir={tmp}", "-c", os.devnull,
             f"--benchmark-max-time={budget}", f"--benchmark-json={out}"],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            sys.exit(f"pytest-benchmark run failed:\n{run.stdout}{run.stderr}")
        benches = json.loads(out.read_text())["benchmarks"]
    stats = {(b["params"]["rep"], b["params"]["which"]): b["stats"] for b in benches}
    return [
        {
            "ratio": stats[rep, "base"]["median"] / stats[rep, "test"]["median"],
            "rounds": stats[rep, "base"]["rounds"] + stats[rep, "test"]["rounds"],
            "total": stats[rep, "base"]["total"] + stats[rep, "test"]["total"],
        }
        for rep in range(repeats)
    ]


def spread(values: list[float], fmt: Callable[[float], str] = "{:.2f}".format) -> str:
    """Median and range over the repeats: how much one run's figure can be trusted."""
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.5, 1.9, 3.0])
    parser.add_argument("--max-time", type=float, default=10.0, help="min_speedup budget (s)")
    args = parser.parse_args()
    count = "{:.0f}".format

    print(
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}, torch {torch.__version__}; true ratio ~2 "
        f"({MATMULS_PER_UNIT} vs {2 * MATMULS_PER_UNIT} 128x128 matmuls on one thread); "
        f"median (min-max) over {args.repeats} runs\n"
    )
    print(
        "| claim | min_speedup verdicts | time to verdict | pairs | ratio | CI | CI width "
        "| pytest-benchmark, same time: ratio of medians | rounds | ratio >= claim |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for factor in args.factors:
        results: list[SpeedupResult] = [
            measure_speedup(work(1), work(2), factor=factor, max_time=args.max_time)
            for _ in range(args.repeats)
        ]
        decided = [r for r in results if r.ci_low is not None and r.ci_high is not None]
        elapsed = [r.elapsed for r in results]
        verdicts = Counter(r.verdict for r in results)
        bench = pytest_benchmark_ratios(args.repeats, statistics.median(elapsed) / 2)
        bench_ratios = [b["ratio"] for b in bench]
        print(
            f"| {factor:.2f}x | {', '.join(f'{n} {v}' for v, n in sorted(verdicts.items()))} "
            f"| {spread(elapsed, format_duration)} | {spread([r.pairs for r in results], count)} "
            f"| {spread([r.ratio for r in results])} "
            f"| {spread([r.ci_low for r in decided])} to {spread([r.ci_high for r in decided])} "
            f"| {spread([100 * (r.ci_high - r.ci_low) / r.ratio for r in decided], count)}% "
            f"| {spread(bench_ratios)} | {spread([b['rounds'] for b in bench], count)} "
            f"| {sum(r >= factor for r in bench_ratios)}/{args.repeats} |"
        )


if __name__ == "__main__":
    main()
