"""Timing of callables: warm-up, synchronized rounds, an adaptive stop, and paired speed-ups.

A round is the wall time a user waits for: ``sync(); start; fn(); sync(); stop``. The sync before
the clock drains work queued earlier (a warm-up's kernels must not land in the first round); the
sync after it makes an asynchronous device's work count. Warm-up calls are not timed, because
they pay one-off costs (compilation, cuDNN autotuning, lazy loading, allocator growth) that say
nothing about the steady state the claims are about.

Budgets (``max_time``) count the timed rounds only, from the first timed round on: warm-up cannot
be cut short anyway, and it is reported by count. For ``measure``, minimum rounds are a floor
that the budget does not cut, since fewer than that gives no figure worth reporting. For
``measure_speedup`` the budget is a bound: the warm-up pair shows up front whether it holds the
pairs a verdict needs (if not, the measurement refuses to start, naming the budget that would),
and no pair starts that would overrun it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

from pytest_sdmem.base.units import format_duration
from pytest_sdmem.measuring.speedup import DEFAULT_PLAN, SequentialPlan, SpeedupResult, StopReason
from pytest_sdmem.measuring.stats import check_confidence, iqr, median, median_ci, median_ci_ranks

Sync = Callable[[], None]

# A reading of 0 means "under one tick"; count it as one tick so ratios stay finite.
CLOCK_TICK = time.get_clock_info("perf_counter").resolution


def no_sync() -> None:
    """Host work is finished when the call returns: nothing to wait for."""


def synchronizer(device: str) -> Sync:
    """The call that waits for ``device`` to finish queued work: a no-op on "cpu" (and "meta",
    which does no work), ``torch.cuda.synchronize(device)`` on "cuda" / "cuda:N"."""
    kind = device.split(":", 1)[0]
    if kind in ("cpu", "meta"):
        return no_sync
    if kind == "cuda":
        import torch  # only here: timing plain callables must not pay for importing torch

        return functools.partial(torch.cuda.synchronize, device)
    raise ValueError(f"cannot synchronize device {device!r}: expected 'cpu', 'meta', 'cuda[:N]'")


def _timed_call(fn: Callable[[], Any], sync: Sync) -> float:
    sync()
    start = perf_counter()
    fn()
    sync()
    return max(perf_counter() - start, CLOCK_TICK)


def _warm_up(fn: Callable[[], Any], sync: Sync, warmup: int) -> None:
    for _ in range(warmup):
        fn()
        sync()


def _budget_left(start: float, done: int, max_time: float) -> bool:
    """Whether one more round (or pair), at the average cost so far, still fits ``max_time``."""
    elapsed = perf_counter() - start
    return elapsed + elapsed / done <= max_time


def _check_int(name: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}{why}, got {value!r}")
    return value


def _check_positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
    return float(value)


def _median_interval(times: tuple[float, ...],
                     confidence: float) -> tuple[float, float] | None:
    """The ``confidence`` interval of the median of ``times``; None with too few for one."""
    if median_ci_ranks(len(times), confidence) is None:
        return None
    return median_ci(times, confidence)


class _MedianOfRounds:
    """What a whole call and each of its parts report alike: the median of the timed rounds
    and its interval at ``confidence``."""

    times: tuple[float, ...]
    confidence: float

    @property
    def median(self) -> float:
        return median(self.times)

    @property
    def ci(self) -> tuple[float, float] | None:
        """Interval of the median at ``confidence``; None with too few rounds for one."""
        return _median_interval(self.times, self.confidence)


@dataclass(frozen=True)
class PartTimes(_MedianOfRounds):
    """One part of a call (a denoising step, the text encoding, the VAE decode), one figure per
    timed round (seconds): reported, like the whole call, as the median of the rounds with its
    interval, so a part and the call it belongs to are read alike."""

    times: tuple[float, ...]
    confidence: float

    def to_dict(self, name: str) -> dict[str, Any]:
        """The part's figures as flat ``name``, ``name_ci_low``, ``name_ci_high``, ``name_times``
        keys of the record's latency section, beside the whole call's ``median`` and ``ci_*``."""
        ci = self.ci
        return {name: self.median, f"{name}_ci_low": ci[0] if ci else None,
                f"{name}_ci_high": ci[1] if ci else None, f"{name}_times": list(self.times)}


#: The parts of a generation that ``LatencyBreakdown`` times in every round, in report order.
ROUND_PARTS = ("per_step", "text_encoding", "vae_decode")
#: The breakdown's figures read once per pipeline, not per round.
SINGLE_READINGS = ("load", "first_call")
#: Every figure of a breakdown, as named in a record's ``latency`` section (seconds), beside
#: the steady rounds' ``median``. A file written before the breakdown has none of them, and a
#: latency taken from min_speedup's rounds neither: readers treat them as optional.
BREAKDOWN_FIGURES = (*SINGLE_READINGS, *ROUND_PARTS)


@dataclass(frozen=True)
class LatencyBreakdown:
    """Where a generation's time goes, beside its steady rounds (``TimingResult``).

    ``load``: building the pipeline, from the model cache to the technique applied (None when
    the pipeline was built outside ``make_sd_pipe``/``SdPipe.fresh``). ``first_call``: the
    pipeline's first generation, cold (compilation, cuDNN autotuning, lazy loading, allocator
    growth); one reading each, as they happen once. The parts are timed in each measured round:
    ``per_step`` is the median of that round's denoising steps, ``text_encoding`` and
    ``vae_decode`` its calls of the text encoder and the VAE decoder; None when the pipeline
    did not report the part.
    """

    load: float | None
    first_call: float | None
    per_step: PartTimes | None
    text_encoding: PartTimes | None
    vae_decode: PartTimes | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures in seconds: ``load``, ``first_call`` and each part's median with
        its interval and round figures (see ``PartTimes.to_dict``); a part not timed is null."""
        data: dict[str, Any] = {"load": self.load, "first_call": self.first_call}
        for name in ROUND_PARTS:
            part: PartTimes | None = getattr(self, name)
            data.update(part.to_dict(name) if part else {name: None})
        return data


@dataclass(frozen=True)
class TimingResult(_MedianOfRounds):
    """Round times of one callable (seconds) and why the rounds stopped.

    ``stop_reason``: "precision" when the ``confidence`` interval of the median came within the
    asked relative precision, "max_rounds" or "max_time" when a limit came first. ``breakdown``:
    where a generation's time went, when ``SdPipe.latency`` timed one (None for a plain callable).
    """

    times: tuple[float, ...]
    warmup: int
    confidence: float
    stop_reason: Literal["precision", "max_rounds", "max_time"]
    breakdown: LatencyBreakdown | None = None

    @property
    def rounds(self) -> int:
        return len(self.times)

    @property
    def iqr(self) -> float:
        return iqr(self.times)

    @property
    def total(self) -> float:
        """Sum of the timed rounds (warm-up and the time between rounds not included)."""
        return sum(self.times)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures, times in seconds; a breakdown's figures beside them."""
        ci = self.ci
        return {
            "times": list(self.times),
            "warmup": self.warmup,
            "rounds": self.rounds,
            "median": self.median,
            "iqr": self.iqr,
            "total": self.total,
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
            "confidence": self.confidence,
            "stop_reason": self.stop_reason,
            **(self.breakdown.to_dict() if self.breakdown else {}),
        }


def _precise_enough(times: list[float], confidence: float, rel_precision: float) -> bool:
    """Whether the median's interval lies within +-``rel_precision`` of the median: both sides,
    since order-statistic intervals are asymmetric and right-skewed times widen the upper one."""
    if median_ci_ranks(len(times), confidence) is None:
        return False
    low, high = median_ci(times, confidence)
    mid = median(times)
    return max(mid - low, high - mid) <= rel_precision * mid


def measure(
    fn: Callable[[], Any],
    *,
    sync: Sync | None = None,
    warmup: int = 1,
    min_rounds: int = 3,
    max_rounds: int = 1000,
    max_time: float = 30.0,
    rel_precision: float = 0.02,
    confidence: float = 0.95,
) -> TimingResult:
    """Time ``fn()`` until its median is known to ``rel_precision`` or a limit is reached.

    After ``warmup`` untimed calls, rounds run until, with at least ``min_rounds`` done, the
    ``confidence`` interval of the median is within ``rel_precision`` of it, or ``max_rounds``
    rounds are done, or one more round would not fit in ``max_time`` seconds. Exceptions from
    ``fn`` or ``sync`` propagate.
    """
    sync = sync or no_sync
    _check_int("warmup", warmup, 0)
    _check_int("min_rounds", min_rounds, 1)
    _check_int("max_rounds", max_rounds, min_rounds, " (min_rounds)")
    max_time = _check_positive("max_time", max_time)
    rel_precision = _check_positive("rel_precision", rel_precision)
    check_confidence(confidence)
    _warm_up(fn, sync, warmup)
    times: list[float] = []
    start = perf_counter()
    while True:
        times.append(_timed_call(fn, sync))
        if len(times) < min_rounds:
            continue
        if _precise_enough(times, confidence, rel_precision):
            reason: Literal["precision", "max_rounds", "max_time"] = "precision"
        elif len(times) >= max_rounds:
            reason = "max_rounds"
        elif not _budget_left(start, len(times), max_time):
            reason = "max_time"
        else:
            continue
        return TimingResult(
            times=tuple(times), warmup=warmup, confidence=confidence, stop_reason=reason
        )


class TimeBudgetTooShort(ValueError):
    """The time budget cannot hold the pairs a speed-up verdict needs, as measured on the
    warm-up pair: raised before any timed pair, naming the budget that would do."""

    def __init__(self, pair_time: float, min_pairs: int, max_time: float) -> None:
        self.pair_time, self.min_pairs, self.max_time = pair_time, min_pairs, max_time
        #: whole seconds for min_pairs pairs, with 20% for the pairs' own scatter
        self.suggested = math.ceil(1.2 * min_pairs * pair_time)
        super().__init__(
            f"a speed-up verdict needs at least {min_pairs} timed pairs, about "
            f"{format_duration(min_pairs * pair_time)} at the warm-up pair's "
            f"{format_duration(pair_time)}, but the time budget is {format_duration(max_time)}: "
            f"no verdict could be reached. Set --sdmem-max-time {self.suggested} or more "
            f"(max_time={self.suggested})")


def _warm_pair_time(fn_test: Callable[[], Any], fn_base: Callable[[], Any], sync: Sync,
                    warmup: int, needed: float) -> float:
    """Run the warm-up pairs, timing each, and return the last one's wall time: what a timed
    pair will cost. When that is more than ``needed`` and the last warm-up call was the first
    (a cold call pays compilation, autotuning, lazy loading), one more warm pair decides."""
    pair_time = math.inf
    for _ in range(warmup):
        pair_time = _timed_call(fn_base, sync) + _timed_call(fn_test, sync)
    if pair_time > needed and warmup == 1:
        pair_time = _timed_call(fn_base, sync) + _timed_call(fn_test, sync)
    return pair_time


def measure_speedup(
    fn_test: Callable[[], Any],
    fn_base: Callable[[], Any],
    *,
    factor: float,
    sync: Sync | None = None,
    warmup: int = 1,
    plan: SequentialPlan = DEFAULT_PLAN,
    min_pairs: int | None = None,
    max_time: float = 30.0,
) -> SpeedupResult:
    """Decide whether ``fn_test`` is at least ``factor`` times faster than ``fn_base``.

    Pairs alternate their order (base, test, then test, base: A B B A ...) so that a drift of the
    machine, or one call warming a cache for the next, weighs on both sides alike; each pair
    gives one ratio ``t_base / t_test``, so a slow spell that hits a whole pair cancels out. After
    each pair, from ``min_pairs`` on, ``plan`` looks at the ratios (``SequentialPlan.look``: a
    t-test on log-ratios up to pair 12, the distribution-free interval of the median from pair
    10, alone when the ratios are heavy-tailed): the first
    "pass" or "fail" stops the run (stop_reason "verdict"). Otherwise the run stops,
    "inconclusive", after the plan's last look (stop_reason "max_pairs") or before a pair that
    would not fit in ``max_time`` (stop_reason "max_time").

    ``max_time`` is a bound on the timed pairs: a pair starts only if the time so far plus the
    slowest pair yet (the warm-up pair's, before the first) fits in it. It must hold the
    ``min_pairs`` pairs (default: the plan's first look) a verdict needs: ``warmup`` untimed
    pairs come first (at least one), and if ``min_pairs`` pairs at the last warm-up pair's time
    do not fit, :class:`TimeBudgetTooShort` is raised before any timed pair, naming the budget
    that would. A smaller ``min_pairs`` than the plan's first look, or a larger one than its
    last, is a ValueError. Exceptions from the callables propagate.
    """
    sync = sync or no_sync
    factor = _check_positive("factor", factor)
    max_time = _check_positive("max_time", max_time)
    _check_int("warmup", warmup, 1, " (the warm-up pair sizes the time budget)")
    if min_pairs is None:
        min_pairs = plan.first_look
    _check_int("min_pairs", min_pairs, plan.first_look, " (the plan's first look)")
    if min_pairs > plan.max_pairs:
        raise ValueError(f"min_pairs must be at most the plan's {plan.max_pairs} pairs, "
                         f"got {min_pairs}")
    slowest = _warm_pair_time(fn_test, fn_base, sync, warmup, max_time / min_pairs)
    if min_pairs * slowest > max_time:
        raise TimeBudgetTooShort(slowest, min_pairs, max_time)
    times_test: list[float] = []
    times_base: list[float] = []
    start = perf_counter()
    reason: StopReason = "max_pairs"
    while len(times_test) < plan.max_pairs:
        if perf_counter() - start + slowest > max_time:
            reason = "max_time"
            break
        pair_start = perf_counter()
        if len(times_test) % 2 == 0:
            times_base.append(_timed_call(fn_base, sync))
            times_test.append(_timed_call(fn_test, sync))
        else:
            times_test.append(_timed_call(fn_test, sync))
            times_base.append(_timed_call(fn_base, sync))
        if len(times_test) == 1:
            slowest = 0.0  # from here on, the timed pairs say what a pair costs
        slowest = max(slowest, perf_counter() - pair_start)
        if len(times_test) < min_pairs:
            continue
        ratios = [b / t for t, b in zip(times_test, times_base, strict=True)]
        if plan.look(ratios, factor).verdict != "inconclusive":
            reason = "verdict"
            break
    return SpeedupResult.from_pairs(times_test, times_base, factor=factor, plan=plan,
                                    stop_reason=reason, elapsed=perf_counter() - start)
