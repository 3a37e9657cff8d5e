"""How often the sequential plan of ``min_speedup`` gives a wrong verdict, and after how many
pairs it gives a right one: simulated over recorded timing traces and synthetic noise.

Not a test: it prints markdown tables for docs/performance.md (the unit tests check the same
bounds on smaller seeded simulations).

Each scenario yields runs of up to ``plan.max_pairs`` pairs of (test, base) round times in
``timing.measure_speedup``'s order, and the true ratio of its source. Every run is replayed by
``SequentialPlan.first_verdict`` against three claims:

- the true ratio itself: any verdict, pass or fail, is wrong (the plan's bound is 2.5% for both
  together);
- the true ratio / 1.2 (a clear claim that must pass) and x 1.2 (one that must fail): how many
  pairs the verdict takes, and how often it is wrong or missing.

Sources:

- recorded traces (``benchmarks/data/*.json``, from ``benchmarks/record_traces.py``): a run
  starts at every pair of the trace and takes the pairs that follow, wrapping around at the
  end, so drift and bursts play as they happened; the true
  ratio is the median ratio of the whole trace (so the windows are not independent, and the
  error rate of a trace is a rough figure: its standard error is larger than binomial);
- synthetic: per-call times with lognormal noise (right-skewed times) of 1% (quiet: the
  ``tiny`` pipeline's scatter on this machine when idle, from the CI widths in
  docs/performance.md), 3% and 10% (loaded), additive exponential stalls (the same seconds on
  both sides, so the shorter test call suffers more: the ratio's distribution is skewed),
  heavy tails (5% of calls 5-20x slower), a linear drift (each call 1% slower than the one
  before) and a step (from a random call on, every call 1.5x slower). The true ratio is the
  median ratio over a million simulated pairs.

``--calibrate`` finds the t track's per-look level: the largest ``look_alpha`` (on a 0.0001
grid) whose wrong verdicts at the true ratio, both directions together, stay within the plan's
``error_rate - sign_share`` for normal log-ratios, with the same random numbers at every level
tried (the sign track's share is exact, see ``stats.sequential_confidence``).

    python benchmarks/verdict_simulation.py [--runs 20000] [--calibrate]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytest_sdmem.measuring.speedup import DEFAULT_PLAN, SequentialPlan

DATA = Path(__file__).parent / "data"
MARGIN = 1.2  # a clear claim: 20% from the true ratio
TEST_TIME, BASE_TIME = 1.0, 2.0  # synthetic medians: a true ratio near 2

Rng = np.random.Generator
Noise = Callable[[Rng, int], tuple[np.ndarray, np.ndarray]]  # (runs, pairs) -> test, base


@dataclass(frozen=True)
class Scenario:
    """Runs of ratios from one source, and the true ratio they scatter around."""

    name: str
    ratios: np.ndarray  # (runs, pairs)
    true_ratio: float


@dataclass(frozen=True)
class Outcome:
    """The plan's verdicts at one claim over all runs of a scenario."""

    passed: int
    failed: int
    runs: int
    pairs: list[int]  # pairs taken by the runs that reached a verdict

    def rate(self, count: int) -> float:
        return count / self.runs


def lognormal(sigma: float) -> Noise:
    def draw(rng: Rng, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        return (TEST_TIME * rng.lognormal(0, sigma, shape),
                BASE_TIME * rng.lognormal(0, sigma, shape))
    return draw


def stalls(mean: float) -> Noise:
    """Quiet noise plus an exponential stall of ``mean`` seconds on every call."""
    def draw(rng: Rng, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        test, base = lognormal(0.02)(rng, shape)
        return test + rng.exponential(mean, shape), base + rng.exponential(mean, shape)
    return draw


def heavy(share: float) -> Noise:
    """Quiet noise, and ``share`` of calls 5-20x slower (preemption, a neighbour's burst)."""
    def draw(rng: Rng, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        test, base = lognormal(0.02)(rng, shape)
        hit = [np.where(rng.random(shape) < share, rng.uniform(5, 20, shape), 1.0)
               for _ in range(2)]
        return test * hit[0], base * hit[1]
    return draw


def call_factors(pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Call index of the test and the base side of each pair in measure_speedup's order."""
    i = np.arange(pairs)
    first = 2 * i
    test_call = np.where(i % 2 == 0, first + 1, first)
    return test_call, np.where(i % 2 == 0, first, first + 1)


def drift(per_call: float) -> Noise:
    def draw(rng: Rng, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        test, base = lognormal(0.02)(rng, shape)
        test_call, base_call = call_factors(shape[1])
        return test * (1 + per_call) ** test_call, base * (1 + per_call) ** base_call
    return draw


def step(factor: float) -> Noise:
    def draw(rng: Rng, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        test, base = lognormal(0.02)(rng, shape)
        test_call, base_call = call_factors(shape[1])
        start = rng.integers(0, 2 * shape[1], (shape[0], 1))
        return (test * np.where(test_call >= start, factor, 1.0),
                base * np.where(base_call >= start, factor, 1.0))
    return draw


SYNTHETIC: dict[str, Noise] = {
    "lognormal 1% (quiet)": lognormal(0.01),
    "lognormal 3%": lognormal(0.03),
    "lognormal 10% (loaded)": lognormal(0.10),
    "stalls, exp. mean 0.1 s": stalls(0.1),
    "heavy tails: 5% of calls 5-20x": heavy(0.05),
    "drift: +1% per call": drift(0.01),
    "step: x1.5 from a random call": step(1.5),
}


def synthetic(name: str, noise: Noise, runs: int, pairs: int, seed: int) -> Scenario:
    rng = np.random.default_rng(seed)
    test, base = noise(rng, (runs, pairs))
    big_test, big_base = noise(rng, (1000, 1000))
    return Scenario(name, base / test, float(np.median(big_base / big_test)))


def traces(pairs: int) -> Iterator[Scenario]:
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text())
        ratios = np.asarray(data["base"]) / np.asarray(data["test"])
        # One run from each pair on, wrapping around at the end: as many runs as pairs.
        windows = ratios[(np.arange(len(ratios))[:, None] + np.arange(pairs)) % len(ratios)]
        yield Scenario(f"trace {path.stem} ({len(ratios)} pairs)", windows,
                       float(np.median(ratios)))


def outcome(plan: SequentialPlan, ratios: np.ndarray, claim: float) -> Outcome:
    passed = failed = 0
    pairs = []
    for row in ratios:
        look, n = plan.first_verdict(row.tolist(), claim)
        passed += look.verdict == "pass"
        failed += look.verdict == "fail"
        if look.verdict != "inconclusive":
            pairs.append(n)
    return Outcome(passed, failed, len(ratios), pairs)


def pairs_cell(pairs: list[int]) -> str:
    if not pairs:
        return "-"
    return (f"{statistics.median(pairs):.0f} / {np.percentile(pairs, 90):.0f} / "
            f"{sum(n <= 4 for n in pairs) / len(pairs):.0%}")


def row(plan: SequentialPlan, scenario: Scenario) -> str:
    at = outcome(plan, scenario.ratios, scenario.true_ratio)
    good = outcome(plan, scenario.ratios, scenario.true_ratio / MARGIN)
    bad = outcome(plan, scenario.ratios, scenario.true_ratio * MARGIN)
    wrong = at.rate(at.passed + at.failed)
    return (
        f"| {scenario.name} | {len(scenario.ratios)} | {scenario.true_ratio:.3f} "
        f"| **{wrong:.2%}** ({at.rate(at.passed):.2%} / {at.rate(at.failed):.2%}) "
        f"| {good.rate(good.passed):.1%} | {good.rate(good.failed):.2%} | {pairs_cell(good.pairs)} "
        f"| {bad.rate(bad.failed):.1%} | {bad.rate(bad.passed):.2%} | {pairs_cell(bad.pairs)} |"
    )


def t_track_wrong(plan: SequentialPlan, ratios: np.ndarray) -> float:
    """The share of runs of ``ratios`` (true ratio 1) whose t track gives any verdict."""
    wrong = 0
    for row in ratios.tolist():
        wrong += any(plan.t_look(row[:n], 1.0).verdict != "inconclusive"
                     for n in range(plan.first_look, plan.last_t_look + 1))
    return wrong / len(ratios)


def calibrate(plan: SequentialPlan, runs: int, seed: int) -> None:
    """The largest look_alpha whose t track stays within error_rate - sign_share."""
    ratios = np.exp(np.random.default_rng(seed).normal(0, 0.05, (runs, plan.last_t_look)))
    share = plan.error_rate - plan.sign_share
    low, high = 1, 100  # in units of 0.0001
    while high - low > 1:
        mid = (low + high) // 2
        rate = t_track_wrong(dataclasses.replace(plan, look_alpha=mid / 10_000), ratios)
        print(f"look_alpha {mid / 10_000:.4f}: t track wrong in {rate:.3%}", flush=True)
        if rate <= share:
            low = mid
        else:
            high = mid
    print(f"largest look_alpha with the t track within {share:.2%} over {runs} normal runs: "
          f"{low / 10_000:.4f}; the sign track adds at most {plan.sign_share:.2%} (exact)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="synthetic runs per scenario")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--calibrate", action="store_true",
                        help="find look_alpha instead (use --runs 100000 or more)")
    args = parser.parse_args()
    plan = DEFAULT_PLAN
    if args.calibrate:
        calibrate(plan, args.runs, args.seed)
        return
    print(f"plan: t-test on log-ratios at pairs {plan.first_look}-{plan.last_t_look}, "
          f"{plan.look_alpha:.2%} per side per look (not when heavy-tailed); sign test at pairs "
          f"{plan.fallback_from}-{plan.max_pairs}, {plan.sign_level:.3%} per look; "
          f"{args.runs} synthetic runs per scenario, seed {args.seed}; clear claims: true ratio "
          f"/ {MARGIN} (pass) and x {MARGIN} (fail)")
    print()
    print("| source | runs | true ratio | wrong verdicts at the true ratio (pass / fail) "
          "| clear pass: passed | wrong | pairs (median / p90 / share <= 4) "
          "| clear fail: failed | wrong | pairs (median / p90 / share <= 4) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scenario in traces(plan.max_pairs):
        print(row(plan, scenario), flush=True)
    for seed, (name, noise) in enumerate(SYNTHETIC.items(), start=args.seed):
        print(row(plan, synthetic(name, noise, args.runs, plan.max_pairs, seed)), flush=True)


if __name__ == "__main__":
    main()
