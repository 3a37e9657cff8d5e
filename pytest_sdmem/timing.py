"""Timing of callables: warm-up, synchronized rounds, an adaptive stop, and paired speed-ups.

A round is the wall time a user waits for: ``sync(); start; fn(); sync(); stop``. The sync before
the clock drains work queued earlier (a warm-up's kernels must not land in the first round); the
sync after it makes an asynchronous device's work count. Warm-up calls are not timed, because
they pay one-off costs (compilation, cuDNN autotuning, lazy loading, allocator growth) that say
nothing about the steady state the claims are about.

Budgets (``max_time``) count the timed rounds only, from the first timed round on: warm-up cannot
be cut short anyway, and it is reported by count. Minimum rounds or pairs are a floor that the
budget does not cut, since fewer than that gives no figure worth reporting.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

from pytest_sdmem.stats import (
    SpeedupResult,
    StopReason,
    check_confidence,
    format_percent,
    iqr,
    median,
    median_ci,
    median_ci_ranks,
    min_sample_size,
    sequential_confidence,
    speedup_verdict,
)

Sync = Callable[[], None]

# A reading of 0 means "under one tick"; count it as one tick so ratios stay finite.
CLOCK_TICK = time.get_clock_info("perf_counter").resolution

#: The most pairs of a speed-up measurement. Every possible look widens the interval of all of
#: them (``stats.sequential_confidence`` at 95%: 97.76% per look for up to 20 pairs, 98.39% for
#: 30, 98.44% for 40, where a first verdict needs 8 pairs instead of 7); a claim still unsettled
#: after 30 pairs sits too close to the true ratio for a CI gate to decide.
MAX_PAIRS = 30


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


def _warm_up(fns: tuple[Callable[[], Any], ...], sync: Sync, warmup: int) -> None:
    for _ in range(warmup):
        for fn in fns:
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


@dataclass(frozen=True)
class TimingResult:
    """Round times of one callable (seconds) and why the rounds stopped.

    ``stop_reason``: "precision" when the ``confidence`` interval of the median came within the
    asked relative precision, "max_rounds" or "max_time" when a limit came first.
    """

    times: tuple[float, ...]
    warmup: int
    confidence: float
    stop_reason: Literal["precision", "max_rounds", "max_time"]

    @property
    def rounds(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return median(self.times)

    @property
    def iqr(self) -> float:
        return iqr(self.times)

    @property
    def total(self) -> float:
        """Sum of the timed rounds (warm-up and the time between rounds not included)."""
        return sum(self.times)

    @property
    def ci(self) -> tuple[float, float] | None:
        """Interval of the median at ``confidence``; None with too few rounds for one."""
        if median_ci_ranks(self.rounds, self.confidence) is None:
            return None
        return median_ci(self.times, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures, times in seconds."""
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
    _warm_up((fn,), sync, warmup)
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


def measure_speedup(
    fn_test: Callable[[], Any],
    fn_base: Callable[[], Any],
    *,
    factor: float,
    sync: Sync | None = None,
    warmup: int = 1,
    confidence: float = 0.95,
    min_pairs: int | None = None,
    max_pairs: int = MAX_PAIRS,
    max_time: float = 30.0,
) -> SpeedupResult:
    """Decide whether ``fn_test`` is at least ``factor`` times faster than ``fn_base``.

    Pairs alternate their order (base, test, then test, base: A B B A ...) so that a drift of the
    machine, or one call warming a cache for the next, weighs on both sides alike; each pair
    gives one ratio ``t_base / t_test``, so a slow spell that hits a whole pair cancels out. After
    each pair, from ``min_pairs`` on, the median ratio's order-statistic interval decides (see
    ``stats.speedup_verdict``): the first "pass" or "fail" stops the run (stop_reason
    "verdict"). The interval is at ``stats.sequential_confidence``, wider than a single one at
    ``confidence``, so that looking after every pair up to ``max_pairs`` is wrong no more often
    than one look at ``confidence`` would be. The run also stops, "inconclusive", after
    ``max_pairs`` pairs (stop_reason "max_pairs") or when one more pair would not fit in
    ``max_time`` seconds (stop_reason "max_time").

    ``min_pairs`` defaults to the fewest pairs that have an interval at ``confidence`` (6 at
    95%; an interval at the looks' higher level needs one or two more); a smaller value is a
    ValueError, as no verdict could be reached with it. ``warmup`` calls of each callable come
    first, untimed. Exceptions from the callables propagate.
    """
    sync = sync or no_sync
    factor = _check_positive("factor", factor)
    max_time = _check_positive("max_time", max_time)
    _check_int("warmup", warmup, 0)
    check_confidence(confidence)
    needed = min_sample_size(confidence)
    why = f" (the fewest pairs with a {format_percent(confidence)} interval of the median)"
    min_pairs = needed if min_pairs is None else _check_int("min_pairs", min_pairs, needed, why)
    max_pairs = _check_int("max_pairs", max_pairs, min_pairs, " (at least min_pairs)")
    level = sequential_confidence(confidence, min_pairs, max_pairs)
    _warm_up((fn_base, fn_test), sync, warmup)
    times_test: list[float] = []
    times_base: list[float] = []
    ratios: list[float] = []
    start = perf_counter()
    while True:
        if len(ratios) % 2 == 0:
            t_base = _timed_call(fn_base, sync)
            t_test = _timed_call(fn_test, sync)
        else:
            t_test = _timed_call(fn_test, sync)
            t_base = _timed_call(fn_base, sync)
        times_test.append(t_test)
        times_base.append(t_base)
        ratios.append(t_base / t_test)
        if len(ratios) < min_pairs:
            continue
        reason: StopReason
        if speedup_verdict(ratios, factor, level) != "inconclusive":
            reason = "verdict"
        elif len(ratios) >= max_pairs:
            reason = "max_pairs"
        elif not _budget_left(start, len(ratios), max_time):
            reason = "max_time"
        else:
            continue
        return SpeedupResult.from_pairs(
            times_test,
            times_base,
            factor=factor,
            confidence=confidence,
            stop_reason=reason,
            elapsed=perf_counter() - start,
            interval_confidence=level,
        )
