"""Robust statistics for speed claims: medians, quartiles, an exact interval of the median, and
the verdict of a paired speed-up measurement.

Why medians and order statistics rather than means and t-intervals: round times on a shared
machine are skewed to the right (preemption, garbage collection, a neighbour's burst only ever
make a round slower), so a mean and a normal-theory interval are dragged by the worst rounds. The
interval used here, between two order statistics whose ranks come from the binomial distribution
Bin(n, 1/2), assumes nothing about the shape of the distribution: only that the rounds (or pairs)
are independent draws from one distribution. Its coverage is exact for continuous data and
conservative with ties, at every sample size that has one (6 values at 95%).

A speed-up measurement looks at its interval after every pair and stops at the first verdict;
each look is one more chance of a verdict by luck (with a 95% interval after each of 40 pairs,
a claim exactly at the true ratio passes 7.7% of the time, not 2.5%). ``sequential_confidence``
widens the interval of every look just enough for the whole sequence of looks to keep the
confidence asked for. The same distribution-free argument makes this exact: when the true
median ratio equals the claim, whether each ratio lies below it is a fair coin, so the chance
that any look's interval clears the claim follows from the binomial random walk alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal

from pytest_sdmem.units import format_duration

Verdict = Literal["pass", "fail", "inconclusive"]
StopReason = Literal["verdict", "max_time", "max_pairs"]


def median(values: Sequence[float]) -> float:
    """The median; a ValueError for no values, since a latency of nothing has no meaning."""
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (Q3 - Q1, quartiles interpolated as numpy's default does).

    The spread that a few preempted rounds cannot inflate, unlike the standard deviation.
    One value has no spread: 0.
    """
    if not values:
        raise ValueError("interquartile range of no values")
    if len(values) == 1:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


@dataclass(frozen=True)
class MedianRanks:
    """Which order statistics bound the median's interval, and how often such an interval covers.

    ``lower`` and ``upper`` are 0-based indexes into the sorted values; ``coverage`` is the exact
    probability that ``[sorted[lower], sorted[upper]]`` contains the true median (continuous data).
    """

    lower: int
    upper: int
    coverage: float


def check_confidence(confidence: float) -> None:
    """Reject a confidence outside (0, 1) before any measuring time is spent on it."""
    if isinstance(confidence, bool) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number strictly between 0 and 1: {confidence!r}")


@lru_cache(maxsize=1024)
def median_ci_ranks(n: int, confidence: float) -> MedianRanks | None:
    """Ranks of the narrowest symmetric order-statistic interval of the median with at least
    ``confidence`` coverage among ``n`` values; None when ``n`` is too small for any.

    The interval [x_(j), x_(n+1-j)] (1-based) misses the median on each side with probability
    P(B <= j-1), B ~ Bin(n, 1/2). The largest j with 2 * P(B <= j-1) <= 1 - confidence is found
    with integer binomial coefficients and an exact rational bound (the confidence is read from
    its shortest decimal form, so 0.95 means 19/20): no normal approximation, no rounding at the
    boundary. Cost is O(n) big-integer steps, cached per (n, confidence).
    """
    check_confidence(confidence)
    # the largest tail count allowed on each side, in units of 2^-n
    allowed = (1 - Fraction(str(float(confidence)))) / 2 * 2**n
    tail = 0  # sum of C(n, i) for i < j
    term = 1  # C(n, j)
    j = 0  # order statistics excluded on each side
    while j < n // 2 and tail + term <= allowed:
        tail += term
        term = term * (n - j) // (j + 1)
        j += 1
    if j == 0:
        return None
    return MedianRanks(lower=j - 1, upper=n - j, coverage=float(1 - Fraction(2 * tail, 2**n)))


def min_sample_size(confidence: float) -> int:
    """The fewest values that have an order-statistic interval of the median at ``confidence``
    (6 at 95%, 8 at 99%): the smallest n with 2 * 2^-n <= 1 - confidence."""
    n = 1
    while median_ci_ranks(n, confidence) is None:
        n += 1
    return n


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free ``confidence`` interval of the median of ``values`` (see the module doc).

    Raises ValueError with the number needed when there are too few values for one.
    """
    ranks = median_ci_ranks(len(values), confidence)
    if ranks is None:
        raise ValueError(
            f"a {format_percent(confidence)} interval of the median needs at least "
            f"{min_sample_size(confidence)} values, got {len(values)}"
        )
    ordered = sorted(values)
    return ordered[ranks.lower], ordered[ranks.upper]


def _wrong_pass_probability(confidence: float, first: int, last: int) -> Fraction:
    """The probability that an interval at ``confidence``, looked at after each of ``first`` to
    ``last`` pairs, lies at or above a claim equal to the true median ratio at some look.

    The interval's lower end is at or above the claim exactly when at most ``lower`` ratios lie
    below it; under the claim each ratio does so with probability 1/2, independently. Counted
    exactly over the 2**last equally likely paths of below/above, absorbing those that pass.
    """
    paths = [1]  # paths[k]: paths not absorbed yet with k ratios below the claim
    absorbed = 0
    for n in range(1, last + 1):
        paths = [(paths[k] if k < len(paths) else 0) + (paths[k - 1] if k else 0)
                 for k in range(n + 1)]
        ranks = median_ci_ranks(n, confidence) if n >= first else None
        if ranks is not None:
            absorbed += sum(paths[: ranks.lower + 1]) * 2 ** (last - n)
            paths[: ranks.lower + 1] = [0] * (ranks.lower + 1)
    return Fraction(absorbed, 2**last)


@lru_cache(maxsize=64)
def sequential_confidence(confidence: float, first: int, last: int) -> float:
    """The confidence of each look's interval, for looks after every pair from ``first`` to
    ``last``, such that all the looks together pass (or, by symmetry, fail) a claim equal to
    the true median ratio with probability at most ``(1 - confidence) / 2``: the same error as
    a single interval at ``confidence``.

    The smallest such level on a grid of 0.0001 (finer for a confidence of 99.9% or more),
    rounded up, so never below what is needed.
    At 95%: 97.76% for pairs 6 to 20, 98.39% for 6 to 30, 98.44% for 6 to 40.
    """
    check_confidence(confidence)
    if not 1 <= first <= last:
        raise ValueError(f"looks from pair {first} to pair {last}: need 1 <= first <= last")
    allowed = (1 - Fraction(str(float(confidence)))) / 2
    if _wrong_pass_probability(confidence, first, last) <= allowed:
        return confidence  # e.g. a single look
    # Steps of 0.0001 at 95%; finer for a confidence of 99.9% and above (100 steps per 1 - it).
    grid = 10 ** max(4, math.ceil(-math.log10(1 - confidence)) + 2)
    low, high = math.floor(confidence * grid), grid - 1  # levels low/grid fail or are the ask
    if _wrong_pass_probability(high / grid, first, last) > allowed:
        raise ValueError(f"no interval level keeps {last - first + 1} looks within "
                         f"{format_percent(confidence)}")
    while high - low > 1:
        mid = (low + high) // 2
        if _wrong_pass_probability(mid / grid, first, last) <= allowed:
            high = mid
        else:
            low = mid
    return high / grid


def speedup_verdict(ratios: Sequence[float], factor: float, confidence: float) -> Verdict:
    """The verdict on a claim of ``factor``: "pass" when the interval of the median ratio lies at
    or above it, "fail" when it lies below, "inconclusive" when it contains ``factor`` or there
    are too few ratios for an interval."""
    if median_ci_ranks(len(ratios), confidence) is None:
        return "inconclusive"
    low, high = median_ci(ratios, confidence)
    if low >= factor:
        return "pass"
    if high < factor:
        return "fail"
    return "inconclusive"


def format_percent(confidence: float) -> str:
    """0.95 -> "95%", 0.999 -> "99.9%": confidences as people write them."""
    return f"{confidence * 100:g}%"


@dataclass(frozen=True)
class SpeedupResult:
    """A paired speed-up measurement of a test pipeline against a baseline, and its verdict.

    ``ratios[i] = times_base[i] / times_test[i]`` (above 1: the test is faster). ``ratio`` is
    their median and ``ci_low``/``ci_high`` its interval at ``interval_confidence`` (None with
    too few pairs), which also decided the verdict. ``confidence`` is the measurement's; the
    interval's is higher when it was looked at after several pair counts, so that all the looks
    together keep ``confidence`` (``sequential_confidence``). ``stop_reason`` is "verdict" when
    the interval settled the claim, "max_time" when the time budget ran out first, "max_pairs"
    when the most pairs allowed were run; ``elapsed`` is the wall time of the timed pairs, in
    seconds.
    """

    factor: float
    confidence: float
    times_test: tuple[float, ...]
    times_base: tuple[float, ...]
    ratios: tuple[float, ...]
    median_test: float
    median_base: float
    ratio: float
    ci_low: float | None
    ci_high: float | None
    pairs: int
    verdict: Verdict
    stop_reason: StopReason
    elapsed: float
    interval_confidence: float

    @classmethod
    def from_pairs(
        cls,
        times_test: Sequence[float],
        times_base: Sequence[float],
        *,
        factor: float,
        confidence: float,
        stop_reason: StopReason,
        elapsed: float,
        interval_confidence: float | None = None,
    ) -> SpeedupResult:
        """Summarise paired round times (``times_test[i]`` and ``times_base[i]`` from pair i);
        the interval and the verdict at ``interval_confidence`` (default: ``confidence``)."""
        if len(times_test) != len(times_base) or not times_test:
            raise ValueError(
                f"need the same positive number of test and base times, got {len(times_test)} "
                f"and {len(times_base)}"
            )
        if min(*times_test, *times_base) <= 0:
            raise ValueError("round times must be positive (clamp readings to the clock tick)")
        ratios = tuple(b / t for t, b in zip(times_test, times_base, strict=True))
        level = confidence if interval_confidence is None else interval_confidence
        ci = (
            median_ci(ratios, level)
            if median_ci_ranks(len(ratios), level) is not None
            else (None, None)
        )
        return cls(
            factor=factor,
            confidence=confidence,
            times_test=tuple(times_test),
            times_base=tuple(times_base),
            ratios=ratios,
            median_test=median(times_test),
            median_base=median(times_base),
            ratio=median(ratios),
            ci_low=ci[0],
            ci_high=ci[1],
            pairs=len(ratios),
            verdict=speedup_verdict(ratios, factor, level),
            stop_reason=stop_reason,
            elapsed=elapsed,
            interval_confidence=level,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (times in seconds, tuples as lists) for the results file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def _interval_text(self) -> str:
        level = self.interval_confidence
        if self.ci_low is None or self.ci_high is None:
            return (
                f"no {format_percent(level)} CI: {self.pairs} pairs of the "
                f"{min_sample_size(level)} it needs"
            )
        return (f"{format_percent(level)} CI {self.ci_low:.2f}-{self.ci_high:.2f}, "
                f"{self.pairs} pairs")

    def reason(self, baseline_name: str) -> str:
        """One line for a failure or a summary, naming the figures that decided the verdict."""
        test, base = format_duration(self.median_test), format_duration(self.median_base)
        medians = f"median {test} vs {base}"
        head = f"speedup {self.ratio:.2f}x ({self._interval_text()})"
        claim = f"min_speedup {self.factor:.2f}x against {baseline_name!r}"
        if self.verdict == "pass":
            return f"{head} meets {claim} ({medians})"
        if self.verdict == "fail":
            return f"{head} below {claim} ({medians})"
        unsettled = (
            "too few pairs for an interval"
            if self.ci_low is None
            else f"the interval still contains {self.factor:.2f}x"
        )
        after = format_duration(self.elapsed)
        if self.stop_reason == "max_pairs":  # more time would not help: say so
            after = f"{self.pairs} pairs, the most a measurement runs ({after})"
        return f"{head} inconclusive for {claim}: {unsettled} after {after} ({medians})"

    def section(self) -> str:
        """Per-pair times for a failure report: the evidence behind the one-line reason."""
        lines = [
            f"{self.pairs} pairs in {format_duration(self.elapsed)}, alternating order "
            f"(pair 1: base then test); ratio = base / test; stopped by {self.stop_reason}",
            f"{'pair':>4}  {'first':<5}  {'base':>10}  {'test':>10}  {'ratio':>7}",
        ]
        rows = zip(self.times_test, self.times_base, self.ratios, strict=True)
        for i, (t, b, r) in enumerate(rows):
            first = "base" if i % 2 == 0 else "test"
            lines.append(
                f"{i + 1:>4}  {first:<5}  {format_duration(b):>10}  {format_duration(t):>10}  "
                f"{r:>6.2f}x"
            )
        lines.append(
            f"median: base {format_duration(self.median_base)}, test "
            f"{format_duration(self.median_test)}, ratio {self.ratio:.2f}x "
            f"({self._interval_text()}); verdict {self.verdict} against {self.factor:.2f}x"
        )
        return "\n".join(lines)
