"""Robust statistics for speed claims: medians, quartiles, an exact interval of the median, the
Student t distribution, and the level of an interval looked at after every pair.

Why medians and order statistics rather than means and t-intervals: round times on a shared
machine are skewed to the right (preemption, garbage collection, a neighbour's burst only ever
make a round slower), so a mean and a normal-theory interval are dragged by the worst rounds. The
interval used here, between two order statistics whose ranks come from the binomial distribution
Bin(n, 1/2), assumes nothing about the shape of the distribution: only that the rounds (or pairs)
are independent draws from one distribution. Its coverage is exact for continuous data and
conservative with ties, at every sample size that has one (6 values at 95%).

The verdict of a paired speed-up measurement, which uses these, is in ``speedup.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache


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


def format_percent(confidence: float) -> str:
    """0.95 -> "95%", 0.999 -> "99.9%": confidences as people write them."""
    return f"{confidence * 100:g}%"

