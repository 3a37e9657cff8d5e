"""How long ``min_speedup`` needs to reach a verdict on the ``tiny`` pipeline on the CPU, and how
wide its interval is, next to what the same time gives with pytest-benchmark's default calibration.

Not a pass/fail test: it prints a markdown table for docs/performance.md.

What is compared. One ``tiny`` pipeline (64x64, one image, technique ``none``) generates with N
steps ("test") and with 2N steps ("base"). The true speed-up is known by construction to be a
little below 2: the UNet steps double, but the text encoder, the VAE decode and the scheduler
set-up run once per generation whatever the steps, so with t(n) = c + s*n the ratio is
(c + 2sN) / (c + sN) < 2, and c takes 2 - ratio of the test generation (printed in the header).

For each claimed factor (one well below the ratio, which should pass; one near it; one well
above, which should fail), ``--repeats`` times:

- ``measuring.timing.measure_speedup``, the function behind ``@pytest.mark.min_speedup``,
  runs paired rounds (A B B A ...) until its sequential plan (``stats.SequentialPlan``: a
  t-test on log-ratios from pair 3, the distribution-free interval of the median from pair 10
  and alone when the ratios are heavy-tailed) puts the interval above the claim (pass), below
  it (fail), or the plan's last look or ``--max-time`` comes first (inconclusive). All looks
  together give a claim equal to the true ratio a verdict, either way, in at most 2.5% of runs.
- Then pytest-benchmark, run as users run it (``python -m pytest --benchmark-json=...`` on a
  generated test file whose two tests call the same pipeline with N and 2N steps through the
  ``benchmark`` fixture, default calibration), gets ``--benchmark-max-time`` = half the median
  time min_speedup took for that claim, for each of its two tests: the same time in all. Its
  ratio is the ratio of the two medians; it has no interval and no verdict, so the table shows
  how often that ratio alone would put the claim on the right side.

How to read the table: each cell is the median over the repeats with the range in brackets.
"time to verdict" is the wall time of min_speedup's timed pairs (warm-up excluded). "CI" is the
interval at the last look (of the geometric mean ratio for the t-test, of the median for the
sign test), "CI width" its width relative to the ratio, "method" which test decided. A
claim near the true ratio needs more pairs, or ends "inconclusive" when the budget is too short
to separate them: that is the honest answer, where a single ratio of medians would be read as
pass or fail by chance. pytest-benchmark's rounds count both of its tests; its time is the sum of
their timed rounds (its calibration call and the one extra call it makes afterwards are not
counted).

Torch runs on ``--threads`` threads (1 by default) here and in the pytest-benchmark subprocess:
the machine is shared, and the noise measured should be the neighbours', not our own threads'.

    python benchmarks/speedup_verdict.py [--repeats 5] [--factors 1.5 1.9 2.5] [--max-time 10]
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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from pytest_sdmem.base.units import format_duration
from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.building.runner import make_sd_pipe
from pytest_sdmem.measuring.speedup import DEFAULT_PLAN, SpeedupResult
from pytest_sdmem.measuring.timing import TimeBudgetTooShort, measure_speedup, synchronizer

MODEL = "tiny"
SIZE = 64

# The pytest-benchmark side, as a user writes it: one pipeline, the two generations benchmarked
# one after the other (pytest-benchmark has no paired mode). The parametrize order runs each
# repeat's two tests back to back, so a repeat's ratio is not spread over the whole run.
# Filled in with str.format.
BENCH_TEST = """
import pytest
import torch

from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.building.runner import make_sd_pipe

torch.set_num_threads({threads})


@pytest.fixture(scope="module")
def pipe():
    with make_sd_pipe({model!r}, "none", "cpu", {cache_dir!r},
                      GenerationArgs(height={size}, width={size})) as sd_pipe:
        yield sd_pipe


@pytest.mark.parametrize("steps", [{test_steps}, {base_steps}])
@pytest.mark.parametrize("rep", range({repeats}))
def test_generation(benchmark, pipe, steps, rep):
    benchmark(pipe, num_inference_steps=steps)
"""


@dataclass(frozen=True)
class BenchRun:
    """pytest-benchmark's figures for one repeat: both tests' medians, their rounds and time."""

    ratio: float
    rounds: int
    total: float


@dataclass(frozen=True)
class Workload:
    """The two generations and where the pytest-benchmark subprocess finds the same pipeline."""

    test_steps: int
    base_steps: int
    cache_dir: str
    threads: int

    def bench_runs(self, repeats: int, max_time: float) -> list[BenchRun]:
        """Run pytest-benchmark ``repeats`` times on both generations, ``max_time`` s each."""
        with tempfile.TemporaryDirectory() as tmp:
            test_file = Path(tmp, "test_generation_bench.py")
            test_file.write_text(
                BENCH_TEST.format(
                    threads=self.threads,
                    model=MODEL,
                    cache_dir=self.cache_dir,
                    size=SIZE,
                    repeats=repeats,
                    test_steps=self.test_steps,
                    base_steps=self.base_steps,
                )
            )
            out = Path(tmp, "bench.json")
            # -p no:sdmem: the test uses no sdmem fixture or marker, and pytest-benchmark alone
            # is what is measured; -c devnull keeps this project's pytest settings out.
            run = subprocess.run(
                [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                 "-p", "no:sdmem", "-c", os.devnull, f"--rootdir={tmp}",
                 f"--benchmark-max-time={max_time:.3f}", f"--benchmark-json={out}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if run.returncode != 0:
                sys.exit(f"pytest-benchmark run failed:\n{run.stdout}{run.stderr}")
            benches = json.loads(out.read_text())["benchmarks"]
        stats = {(b["params"]["rep"], b["params"]["steps"]): b["stats"] for b in benches}
        runs = []
        for rep in range(repeats):
            test, base = stats[rep, self.test_steps], stats[rep, self.base_steps]
            runs.append(
                BenchRun(
                    ratio=base["median"] / test["median"],
                    rounds=test["rounds"] + base["rounds"],
                    total=test["total"] + base["total"],
                )
            )
        return runs


def spread(values: list[float], fmt: Callable[[float], str] = "{:.2f}".format) -> str:
    """Median and range over the repeats: how much one run's figure can be trusted."""
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def count(value: float) -> str:
    """Pairs and rounds are whole numbers, but their median over an even count may not be."""
    return f"{value:.0f}"


def percent(value: float) -> str:
    return f"{value:.1f}%"


def verdict_counts(results: list[SpeedupResult]) -> str:
    counts = Counter(r.verdict for r in results)
    return ", ".join(f"{counts[v]} {v}" for v in ("pass", "fail", "inconclusive") if counts[v])


def table_row(factor: float, results: list[SpeedupResult], bench: list[BenchRun]) -> str:
    """One claim's figures: min_speedup's verdicts and interval, then pytest-benchmark's."""
    # A run stopped before its first interval (heavy-tailed ratios, out of time) has none.
    cis = [
        (r.ci_low, r.ci_high, r.ratio)
        for r in results
        if r.ci_low is not None and r.ci_high is not None
    ]
    lows, highs = [low for low, _, _ in cis], [high for _, high, _ in cis]
    widths = [100 * (high - low) / ratio for low, high, ratio in cis]
    interval = f"{spread(lows)} to {spread(highs)} | {spread(widths, percent)}" if cis else "- | -"
    methods = Counter(r.method for r in results)
    above = sum(b.ratio >= factor for b in bench)
    return (
        f"| {factor:.2f}x | {verdict_counts(results)} "
        f"| {spread([r.elapsed for r in results], format_duration)} "
        f"| {spread([r.pairs for r in results], count)} | {spread([r.ratio for r in results])} "
        f"| {interval} | {', '.join(f'{n} {m}' for m, n in sorted(methods.items()))} "
        f"| {spread([b.ratio for b in bench])} | {spread([b.rounds for b in bench], count)} "
        f"| {spread([b.total for b in bench], format_duration)} "
        f"| {above}/{len(bench)} pass, {len(bench) - above}/{len(bench)} fail |"
    )


def machine_line() -> str:
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}"
    )


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per claim (default 5)")
    parser.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=[1.5, 1.9, 2.5],
        help="claimed speed-ups (default: 1.5 1.9 2.5)",
    )
    parser.add_argument(
        "--max-time",
        type=float,
        default=10.0,
        help="min_speedup's time budget per measurement, s (default 10)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2,
        help="N: the test generation's steps; the baseline has 2N (default 2)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = load_average()

    with tempfile.TemporaryDirectory() as cache_dir:
        work = Workload(args.steps, 2 * args.steps, cache_dir, args.threads)
        with make_sd_pipe(
            MODEL, "none", "cpu", cache_dir, GenerationArgs(height=SIZE, width=SIZE)
        ) as pipe:

            def fn_test() -> None:
                pipe(num_inference_steps=work.test_steps)

            def fn_base() -> None:
                pipe(num_inference_steps=work.base_steps)

            rows: list[str] = []
            all_results: list[SpeedupResult] = []
            for factor in args.factors:
                try:
                    results = [
                        measure_speedup(
                            fn_test,
                            fn_base,
                            factor=factor,
                            sync=synchronizer("cpu"),
                            max_time=args.max_time,
                        )
                        for _ in range(args.repeats)
                    ]
                except TimeBudgetTooShort as exc:  # a loaded machine: say so, not a traceback
                    sys.exit(f"--max-time {args.max_time:g}: {exc} (load average "
                             f"{load_average()})")
                all_results += results
                budget = statistics.median(r.elapsed for r in results) / 2
                rows.append(table_row(factor, results, work.bench_runs(args.repeats, budget)))
                print(
                    f"claim {factor:.2f}x done after {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                )

    ratio = statistics.median(r for res in all_results for r in res.ratios)
    median_test = statistics.median(t for res in all_results for t in res.times_test)
    # With t(n) = c + s*n, c = 2 t(N) - t(2N): as a share of t(N), 2 - ratio.
    fixed_share = 2 - ratio
    lines = [
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine_line()}; torch threads: {args.threads}",
        f"- load average (1, 5, 15 min): before {load_before}; after {load_average()}",
        f"- workload: `{MODEL}` pipeline, CPU, {SIZE}x{SIZE}, 1 image, technique `none`; test "
        f"{work.test_steps} steps (median {format_duration(median_test)}) against baseline "
        f"{work.base_steps} steps: step ratio 2, measured ratio {ratio:.2f} (median of all "
        f"pairs), i.e. a fixed cost (text encoder, VAE decode) of about {100 * fixed_share:.0f}% "
        f"of the test generation",
        f"- min_speedup: at most {DEFAULT_PLAN.error_rate:.1%} wrong verdicts (pass and fail "
        f"together) at the true ratio over all looks: t-test on log-ratios at pairs "
        f"{DEFAULT_PLAN.first_look}-{DEFAULT_PLAN.last_t_look} ("
        f"{1 - 2 * DEFAULT_PLAN.look_alpha:.2%} per look), sign test at pairs "
        f"{DEFAULT_PLAN.fallback_from}-{DEFAULT_PLAN.max_pairs} ({DEFAULT_PLAN.sign_level:.3%} "
        f"per look); budget {args.max_time:g} s; pytest-benchmark "
        f"{version('pytest-benchmark')}, default calibration, `--benchmark-max-time` = half of "
        f"min_speedup's median time for the claim, per test",
        f"- {args.repeats} repeats per claim; cells: median (min-max) over the repeats; "
        f"total run time {time.perf_counter() - started:.0f} s",
        "",
        "| claim | min_speedup verdicts | time to verdict | pairs | ratio | CI | CI width "
        "| method | pytest-benchmark ratio of medians | its rounds | its timed total "
        "| its ratio read against the claim |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
