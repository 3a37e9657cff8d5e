"""The verdict of a paired speed-up measurement: when to look at the pairs, with which test, and
the result a test's ``min_speedup`` claim is judged by.

A speed-up measurement is unlike a latency: the claim is about a ratio of two pipelines' times,
paired so that a slow spell hits both, and it should settle in a few pairs when the answer is
clear. The logarithm of a pair's ratio is the difference of two log-times, symmetric when both
sides' noise is alike, so there a t-interval is sound, as long as no outlier says the tails are
heavy. ``SequentialPlan`` looks after every pair from the third: a t-test on the log-ratios, whose
interval shrinks with the data's spread
(three or four pairs settle a clear claim on a quiet machine), at a per-look level chosen so
that all the looks together keep the wrong-verdict rate of a claim equal to the true ratio,
pass and fail counted together, at 2.5%. From the tenth pair on, and alone when the log-ratios
look heavy-tailed, the distribution-free interval of the median (``stats.py``) decides too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pytest_sdmem.base.units import format_duration
from pytest_sdmem.measuring.stats import (
    median,
    median_ci_ranks,
    sequential_confidence,
    student_t_isf,
)

#: What one look at the pairs decides about a speed-up claim (the gate's verdict objects, in
#: ``gate/verdicts.py``, render it).
Decision = Literal["pass", "fail", "inconclusive"]
StopReason = Literal["verdict", "max_time", "max_pairs"]
Method = Literal["t", "sign", "none"]


@dataclass(frozen=True)
class Look:
    """What one look of a :class:`SequentialPlan` at the ratios so far says about a claim.

    ``method`` is "t" (t-interval of the mean log-ratio; ``estimate`` its geometric mean),
    "sign" (order-statistic interval of the median ratio; ``estimate`` the median) or "none"
    (no interval yet: too few pairs, or heavy-tailed ratios before the sign track's first pair;
    ``estimate`` the median). ``level`` is the interval's two-sided coverage at this one look.
    """

    verdict: Decision
    method: Method
    estimate: float
    ci_low: float | None
    ci_high: float | None
    level: float | None
    heavy_tailed: bool


def _verdict(low: float, high: float, factor: float) -> Decision:
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
    verdict: Decision
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
