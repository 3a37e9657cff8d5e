"""Robust statistics for speed claims: medians, quartiles, an exact interval of the median, and
the verdict of a paired speed-up measurement.

Why medians and order statistics rather than means and t-intervals: round times on a shared
machine are skewed to the right (preemption, garbage collection, a neighbour's burst only ever
make a round slower), so a mean and a normal-theory interval are dragged by the worst rounds. The
interval used here, between two order statistics whose ranks come from the binomial distribution
Bin(n, 1/2), assumes nothing about the shape of the distribution: only that the rounds (or pairs)
are independent draws from one distribution. Its coverage is exact for continuous data and
conservative with ties, at every sample size that has one (6 values at 95%).

A speed-up measurement is different: the claim is about a ratio of two pipelines' times, paired
so that a slow spell hits both, and it should settle in a few pairs when the answer is clear.
The logarithm of a pair's ratio is the difference of two log-times, symmetric when both sides'
noise is alike, so there a t-interval is sound, as long as no outlier says the tails are heavy.
``SequentialPlan`` looks after every pair from the third: a t-test on the log-ratios, whose
interval shrinks with the data's spread
(three or four pairs settle a clear claim on a quiet machine), at a per-look level chosen so
that all the looks together keep the wrong-verdict rate of a claim equal to the true ratio,
pass and fail counted together, at 2.5%. From the tenth pair on, and alone when the log-ratios
look heavy-tailed, the distribution-free interval of the median above decides too.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal

from pytest_sdmem.base.units import format_duration

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
    At 95%: 97.76% for pairs 6 to 20, 98.39% for 6 to 30; at 99.25% (the sign track of
    ``SequentialPlan``): 99.743% for pairs 10 to 30.
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


Method = Literal["t", "sign", "none"]


@dataclass(frozen=True)
class Look:
    """What one look of a :class:`SequentialPlan` at the ratios so far says about a claim.

    ``method`` is "t" (t-interval of the mean log-ratio; ``estimate`` its geometric mean),
    "sign" (order-statistic interval of the median ratio; ``estimate`` the median) or "none"
    (no interval yet: too few pairs, or heavy-tailed ratios before the sign track's first pair;
    ``estimate`` the median). ``level`` is the interval's two-sided coverage at this one look.
    """

    verdict: Verdict
    method: Method
    estimate: float
    ci_low: float | None
    ci_high: float | None
    level: float | None
    heavy_tailed: bool


def _verdict(low: float, high: float, factor: float) -> Verdict:
    return "pass" if low >= factor else "fail" if high < factor else "inconclusive"


@dataclass(frozen=True)
class SequentialPlan:
    """When a paired speed-up measurement looks at its ratios, and with which test.

    Two tracks of looks, each a chance of a wrong verdict, with the plan's ``error_rate`` (a
    claim equal to the true ratio gets a verdict, pass or fail, in at most 2.5% of runs) split
    between them; by the union bound the plan errs at most as often as both together.

    - The t track, after each pair from ``first_look`` to ``last_t_look``: a t-test on the
      log-ratios, the interval mean +- t(look_alpha, n-1) * sd / sqrt(n) back on the ratio
      scale. Log-ratios, because a ratio of two right-skewed times is skewed, while its
      logarithm is the difference of two log-times, symmetric when both sides' noise is alike.
      Its interval shrinks with the data's spread, so on a quiet machine three or four pairs
      settle a clear claim, where an order-statistic interval needs 6-10 whatever the spread.
      ``look_alpha`` (one side, one look) keeps the track's wrong verdicts, both directions
      together, within ``error_rate - sign_share`` = 1.75% for normal log-ratios: in 60,000
      simulated runs, 0.0015 erred in 1.63%, 0.0016 in 1.745%, 0.0017 in 1.85% (standard error
      0.05%; ``benchmarks/verdict_simulation.py --calibrate``); 0.0015 keeps two standard
      errors of margin. Each look alone is an exact t-test; only the correlated looks together
      need the simulation. A level that kept each direction alone within the share (twice
      this one) would err about twice as often.
    - The sign track, after each pair from ``fallback_from`` to ``max_pairs``: the
      distribution-free order-statistic interval of the median ratio, each look at the level
      that keeps all of them within ``sign_share`` (exact for any continuous distribution, see
      ``sequential_confidence``: 99.743% per look for 0.75% over pairs 10-30).

    Heavy tails (a preempted round, a neighbour's burst: a call 5-20x slower) break the t-test's
    premise. A look first checks the log-ratios for an outlier (``heavy_tailed``); with one, the
    t track is skipped and the verdict waits for the sign track. A claim that neither track
    settles by ``max_pairs`` is inconclusive.
    """

    first_look: int = 3
    last_t_look: int = 12
    look_alpha: float = 0.0015
    fallback_from: int = 10
    max_pairs: int = 30
    error_rate: float = 0.025
    sign_share: float = 0.0075
    #: A log-ratio further than this many robust standard deviations (1.4826 x the median
    #: absolute deviation) from the median is an outlier...
    outlier_sds: float = 5.0
    #: ... if it is also further than this from the median: 0.2 = 22% on the ratio scale,
    #: far beyond a quiet machine's few percent, and below the 5-20x of a preempted round.
    outlier_floor: float = 0.2

    def __post_init__(self) -> None:
        if not (2 <= self.first_look <= self.last_t_look <= self.max_pairs
                and self.fallback_from <= self.max_pairs):
            raise ValueError(
                f"a plan needs 2 <= first_look ({self.first_look}) <= last_t_look "
                f"({self.last_t_look}) <= max_pairs ({self.max_pairs}) and fallback_from "
                f"({self.fallback_from}) <= max_pairs")
        if not 0 < self.sign_share < self.error_rate < 0.5 or not 0 < self.look_alpha < 0.5:
            raise ValueError(f"a plan needs 0 < sign_share ({self.sign_share}) < error_rate "
                             f"({self.error_rate}) < 0.5 and 0 < look_alpha ({self.look_alpha}) "
                             "< 0.5")

    @property
    def sign_level(self) -> float:
        """The sign track's per-look confidence (cached by ``sequential_confidence``)."""
        return sequential_confidence(1 - self.sign_share, self.fallback_from, self.max_pairs)

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

    def t_look(self, ratios: Sequence[float], factor: float) -> Look:
        """The t track's look (whatever the pair count and the tails: ``look`` decides when)."""
        n = len(ratios)
        logs = [math.log(r) for r in ratios]
        mean = math.fsum(logs) / n
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / (n - 1))
        half = student_t_isf(self.look_alpha, n - 1) * sd / math.sqrt(n)
        low, high = math.exp(mean - half), math.exp(mean + half)
        return Look(_verdict(low, high, factor), "t", math.exp(mean), low, high,
                    1 - 2 * self.look_alpha, False)

    def look(self, ratios: Sequence[float], factor: float) -> Look:
        """The verdict on a claim of ``factor`` from ``ratios`` (all pairs so far)."""
        n = len(ratios)
        heavy = n >= 3 and self.heavy_tailed([math.log(r) for r in ratios])
        t_look = None
        if self.first_look <= n <= self.last_t_look and not heavy:
            t_look = self.t_look(ratios, factor)
            if t_look.verdict != "inconclusive":
                return t_look
        ranks = median_ci_ranks(n, self.sign_level) if n >= self.fallback_from else None
        if ranks is not None:
            ordered = sorted(ratios)
            low, high = ordered[ranks.lower], ordered[ranks.upper]
            sign = Look(_verdict(low, high, factor), "sign", median(ratios), low, high,
                        ranks.coverage, heavy)
            if t_look is None or sign.verdict != "inconclusive":
                return sign
        if t_look is not None:
            return t_look
        return Look("inconclusive", "none", median(ratios), None, None, None, heavy)

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
            why = ("heavy-tailed ratios: the distribution-free interval needs "
                   f"{DEFAULT_PLAN.fallback_from} pairs" if self.heavy_tailed else "too few pairs")
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
