"""Robust statistics for speed claims: medians, quartiles, an exact interval of the median, and
the verdict of a paired speed-up measurement.

Why medians and order statistics rather than means and t-intervals: round times on a shared
machine are skewed to the right (preemption, garbage collection, a neighbour's burst only ever
make a round slower), so a mean and a normal-theory interval are dragged by the worst rounds. The
interval used here, between two order statistics whose ranks come from the binomial distribution
Bin(n, 1/2), assumes nothing about the shape of the distribution: only that the rounds (or pairs)
are independent draws from one distribution. Its coverage is exact for continuous data and
conservative with ties, at every sample size that has one (6 values at 95%).

A speed-up measurement is different: the claim is about a ratio of two pipelines' times, and it
should settle in a few pairs when the answer is clear. ``SequentialPlan`` looks after every
pair from the third: a t-test on the log-ratios, whose interval shrinks with the data's spread
(three or four pairs settle a clear claim on a quiet machine), at a per-look level chosen so
that all the looks together keep the wrong-verdict rate of a claim equal to the true ratio,
pass and fail counted together, at 2.5%. When the log-ratios look heavy-tailed it falls back to
the distribution-free interval of the median above, from the tenth pair.
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


def student_t_sf(t: float, df: int) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom (an int of at least 1).

    Exact closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4, with
    theta = atan(t / sqrt(df))): a finite series in cos(theta), no special functions, so the
    plugin needs no scipy.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int of at least 1, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    term = series = 1.0
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * cos2
            series += term
        inside = 2 / math.pi * (theta + (sin * math.cos(theta) * series if df > 1 else 0.0))
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            series += term
        inside = sin * series
    tail = (1 - inside) / 2  # P(|T| >= |t|) / 2
    return tail if t >= 0 else 1 - tail


@lru_cache(maxsize=256)
def student_t_isf(alpha: float, df: int) -> float:
    """The t with P(T >= t) = ``alpha`` (0 < alpha < 1/2), by bisection to double precision."""
    if not 0 < alpha < 0.5:
        raise ValueError(f"a one-sided tail must be strictly between 0 and 0.5, got {alpha!r}")
    low, high = 0.0, 1.0
    while student_t_sf(high, df) > alpha:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        if student_t_sf(mid, df) > alpha:
            low = mid
        else:
            high = mid
    return high


Method = Literal["t", "sign", "none"]


@dataclass(frozen=True)
class Look:
    """What one look of a :class:`SequentialPlan` at the ratios so far says about a claim.

    ``method`` is "t" (t-interval of the mean log-ratio; ``estimate`` its geometric mean),
    "sign" (order-statistic interval of the median ratio; ``estimate`` the median) or "none"
    (no interval yet: too few pairs, or heavy-tailed ratios before the fallback's first pair;
    ``estimate`` the median). ``level`` is the interval's two-sided coverage at this one look.
    """

    verdict: Verdict
    method: Method
    estimate: float
    ci_low: float | None
    ci_high: float | None
    level: float | None
    heavy_tailed: bool


@dataclass(frozen=True)
class SequentialPlan:
    """When a paired speed-up measurement looks at its ratios, and with which test.

    After each pair from ``first_look`` to ``max_pairs`` the plan looks once. A look is a
    t-test on the log-ratios: the interval mean +- t(look_alpha, n-1) * sd / sqrt(n),
    back on the ratio scale, passes the claim when it lies at or above it and fails it when it
    lies below. Log-ratios, because a ratio of two right-skewed times is skewed, while its
    logarithm is the difference of two log-times, symmetric when the two sides' noise is
    alike. A t-interval uses the spread of the data, so when the machine is quiet three or four
    pairs settle a clear claim; an order-statistic (sign) interval cannot say anything with
    fewer than 6-8 values whatever their spread.

    Each look is one more chance of a wrong verdict. ``look_alpha`` is the one-sided level of
    every look, chosen so that a claim equal to the true ratio gets a verdict, pass or fail,
    in at most ``error_rate`` of runs over all the looks together. 0.0023 per side per look:
    2.38% of 50,000 simulated runs of normal log-ratios over looks at pairs 3-12 got a verdict
    (0.0024: 2.48%, 0.0025: 2.57%; standard error 0.07%; ``benchmarks/verdict_simulation.py
    --calibrate`` recomputes it). A per-side level that kept only one direction within 2.5%
    (0.0039) would give wrong verdicts in 3.8% of runs. Each look's t-test alone is exact for
    normal log-ratios; only the combination of the correlated looks needs the simulation.

    Heavy tails (a preempted round, a neighbour's burst: one call 5-20x slower) break the
    t-test's premise. A look first checks the log-ratios for outliers (``heavy_tailed``); with
    one, the plan gives no verdict before pair ``fallback_from`` and from there uses the
    distribution-free order-statistic interval of the median ratio at the same per-look level
    (exact for any continuous distribution, see ``median_ci_ranks``).
    """

    first_look: int = 3
    max_pairs: int = 12
    look_alpha: float = 0.0023
    fallback_from: int = 10
    error_rate: float = 0.025
    #: A log-ratio further than this many robust standard deviations (1.4826 x the median
    #: absolute deviation) from the median is an outlier...
    outlier_sds: float = 5.0
    #: ... if it is also further than this from the median: 0.2 = 22% on the ratio scale,
    #: far beyond a quiet machine's few percent, and below the 5-20x of a preempted round.
    outlier_floor: float = 0.2

    def __post_init__(self) -> None:
        if not 2 <= self.first_look <= self.fallback_from <= self.max_pairs:
            raise ValueError(
                f"a plan needs 2 <= first_look ({self.first_look}) <= fallback_from "
                f"({self.fallback_from}) <= max_pairs ({self.max_pairs})")
        if not 0 < self.look_alpha < self.error_rate < 0.5:
            raise ValueError(f"a plan needs 0 < look_alpha ({self.look_alpha}) < error_rate "
                             f"({self.error_rate}) < 0.5")

    def heavy_tailed(self, logs: Sequence[float]) -> bool:
        """Whether any log-ratio is an outlier (both limits of the class attributes exceeded).

        Both limits, because on 3 or 4 values the robust spread is itself noisy (normal data
        break the relative limit alone in 10-20% of looks there), while a shift of 22% between
        one pair and the others is no timing noise of a quiet machine.
        """
        mid = median(logs)
        deviations = [abs(x - mid) for x in logs]
        limit = max(self.outlier_sds * 1.4826 * median(deviations), self.outlier_floor)
        return max(deviations) > limit

    def look(self, ratios: Sequence[float], factor: float) -> Look:
        """The verdict on a claim of ``factor`` from ``ratios`` (all pairs so far)."""
        n = len(ratios)
        logs = [math.log(r) for r in ratios]
        heavy = n >= 3 and self.heavy_tailed(logs)
        estimate = median(ratios)
        low: float
        high: float
        if n < self.first_look or (heavy and n < self.fallback_from):
            return Look("inconclusive", "none", estimate, None, None, None, heavy)
        if heavy:
            ranks = median_ci_ranks(n, 1 - 2 * self.look_alpha)
            if ranks is None:  # a plan whose level needs more pairs than fallback_from
                return Look("inconclusive", "none", estimate, None, None, None, heavy)
            ordered = sorted(ratios)
            method: Method = "sign"
            low, high, level = ordered[ranks.lower], ordered[ranks.upper], ranks.coverage
        else:
            mean = math.fsum(logs) / n
            sd = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / (n - 1))
            half = student_t_isf(self.look_alpha, n - 1) * sd / math.sqrt(n)
            method, estimate = "t", math.exp(mean)
            low, high, level = math.exp(mean - half), math.exp(mean + half), 1 - 2 * self.look_alpha
        verdict: Verdict = "pass" if low >= factor else "fail" if high < factor else "inconclusive"
        return Look(verdict, method, estimate, low, high, level, heavy)

    def first_verdict(self, ratios: Sequence[float], factor: float,
                      min_pairs: int | None = None) -> tuple[Look, int]:
        """Replay the plan over a sequence of ratios: the look that stopped it (the first with
        a verdict, else the last) and the pairs it took. For simulations of the plan."""
        first = max(self.first_look, min_pairs or 0)
        last = min(len(ratios), self.max_pairs)
        if last < first:
            raise ValueError(f"need at least {first} ratios to replay the plan, got {len(ratios)}")
        for n in range(first, last + 1):
            result = self.look(ratios[:n], factor)
            if result.verdict != "inconclusive":
                return result, n
        return result, last


DEFAULT_PLAN = SequentialPlan()


def format_percent(confidence: float) -> str:
    """0.95 -> "95%", 0.999 -> "99.9%": confidences as people write them."""
    return f"{confidence * 100:g}%"


@dataclass(frozen=True)
class SpeedupResult:
    """A paired speed-up measurement of a test pipeline against a baseline, and its verdict.

    ``ratios[i] = times_base[i] / times_test[i]`` (above 1: the test is faster). The verdict is
    the last look of the :class:`SequentialPlan`: ``method`` "t" (interval of the geometric mean
    ratio, a t-test on log-ratios), "sign" (order-statistic interval of the median ratio, when
    the ratios looked heavy-tailed) or "none" (no interval: too few pairs, or heavy-tailed
    before the fallback's first pair; ``ci_low``/``ci_high`` are then None and the verdict is
    "inconclusive"). ``ratio`` is the estimate the interval is about (geometric mean for "t",
    median otherwise); ``interval_confidence`` the interval's coverage at that one look (None
    without one). ``error_rate`` is the plan's bound on a wrong verdict, pass or fail, for a
    claim equal to the true ratio, over all its looks. ``stop_reason`` is "verdict" when the
    interval settled the claim, "max_time" when the next pair would not fit in the time budget,
    "max_pairs" when the plan's last look was taken; ``elapsed`` is the wall time of the timed
    pairs, in seconds.
    """

    factor: float
    error_rate: float
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
    method: Method
    heavy_tailed: bool
    stop_reason: StopReason
    elapsed: float
    interval_confidence: float | None

    @classmethod
    def from_pairs(
        cls,
        times_test: Sequence[float],
        times_base: Sequence[float],
        *,
        factor: float,
        stop_reason: StopReason,
        elapsed: float,
        plan: SequentialPlan = DEFAULT_PLAN,
    ) -> SpeedupResult:
        """Summarise paired round times (``times_test[i]`` and ``times_base[i]`` from pair i):
        the verdict is ``plan``'s look at all the pairs."""
        if len(times_test) != len(times_base) or not times_test:
            raise ValueError(
                f"need the same positive number of test and base times, got {len(times_test)} "
                f"and {len(times_base)}"
            )
        if min(*times_test, *times_base) <= 0:
            raise ValueError("round times must be positive (clamp readings to the clock tick)")
        ratios = tuple(b / t for t, b in zip(times_test, times_base, strict=True))
        look = plan.look(ratios, factor)
        return cls(
            factor=factor,
            error_rate=plan.error_rate,
            times_test=tuple(times_test),
            times_base=tuple(times_base),
            ratios=ratios,
            median_test=median(times_test),
            median_base=median(times_base),
            ratio=look.estimate,
            ci_low=look.ci_low,
            ci_high=look.ci_high,
            pairs=len(ratios),
            verdict=look.verdict,
            method=look.method,
            heavy_tailed=look.heavy_tailed,
            stop_reason=stop_reason,
            elapsed=elapsed,
            interval_confidence=look.level,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (times in seconds, tuples as lists) for the results file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def _interval_text(self) -> str:
        if self.ci_low is None or self.ci_high is None or self.interval_confidence is None:
            why = ("heavy-tailed ratios: the distribution-free interval from pair "
                   f"{DEFAULT_PLAN.fallback_from}" if self.heavy_tailed else "too few pairs")
            return f"no interval: {why}, {self.pairs} pairs"
        name = "t-test on log-ratios" if self.method == "t" else "sign test, heavy-tailed"
        return (f"{self.interval_confidence:.2%} CI {self.ci_low:.2f}-"
                f"{self.ci_high:.2f}, {name}, {self.pairs} pairs")

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
            "no interval yet"
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
