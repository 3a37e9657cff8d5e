"""Timing and paired speed-ups.

Two kinds of test: the control flow (stop reasons, order of calls, warm-up, sync, budgets) on a
fake clock, where every duration is exact; and verdicts on real computation whose true ratio is
known, repeated, on whatever load this machine has while the tests run.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest

from pytest_sdmem.measuring import timing
from pytest_sdmem.measuring.timing import (
    BREAKDOWN_FIGURES,
    CLOCK_TICK,
    LatencyBreakdown,
    PartTimes,
    TimeBudgetTooShort,
    TimingResult,
    measure,
    measure_speedup,
    no_sync,
    synchronizer,
)


class FakeClock:
    """A perf_counter that moves only when a fake task runs, with an asynchronous queue.

    A task either advances the clock while it runs, or (``queued``) leaves its seconds pending
    like a GPU kernel, to be paid by the next ``sync()``.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.pending = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def sync(self) -> None:
        self.log.append("sync")
        self.now += self.pending
        self.pending = 0.0

    def task(self, name: str, seconds: Iterable[float], queued: bool = False) -> Callable[[], None]:
        durations = itertools.cycle(seconds)

        def run() -> None:
            self.log.append(name)
            if queued:
                self.pending += next(durations)
            else:
                self.now += next(durations)

        return run


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "perf_counter", fake)
    return fake


# --- measure ---------------------------------------------------------------------------------


def test_warmup_is_excluded_and_a_steady_callable_stops_on_precision(clock: FakeClock) -> None:
    fn = clock.task("fn", [100.0] + [1.0] * 50)  # a slow first call, like compilation
    result = measure(fn, warmup=1, min_rounds=3)
    assert result.times == (1.0,) * 6  # 6 rounds: the fewest with a 95% interval
    assert (result.stop_reason, result.warmup, result.rounds) == ("precision", 1, 6)
    assert (result.median, result.iqr, result.total, result.ci) == (1.0, 0.0, 6.0, (1.0, 1.0))


def test_noisy_callable_stops_at_max_rounds(clock: FakeClock) -> None:
    result = measure(clock.task("fn", [1.0, 2.0]), max_rounds=10, rel_precision=0.01)
    assert (result.stop_reason, result.rounds) == ("max_rounds", 10)


def test_noisy_callable_stops_before_the_next_round_would_overrun_max_time(
    clock: FakeClock,
) -> None:
    result = measure(clock.task("fn", [1.0, 2.0]), warmup=0, max_time=10.5, rel_precision=0.01)
    assert result.stop_reason == "max_time"
    # after 6 rounds (9 s) one more at the average 1.5 s fits; after 7 (10 s) it would not
    assert (result.rounds, result.total) == (7, 10.0)


def test_min_rounds_is_a_floor_the_budget_does_not_cut(clock: FakeClock) -> None:
    result = measure(clock.task("fn", [1.0]), min_rounds=4, max_time=0.001)
    assert (result.stop_reason, result.rounds) == ("max_time", 4)


def test_each_round_syncs_before_the_clock_and_counts_queued_work(clock: FakeClock) -> None:
    clock.pending = 50.0  # work left on the device by earlier code
    fn = clock.task("fn", [3.0], queued=True)
    result = measure(fn, sync=clock.sync, warmup=0)
    assert result.times == (3.0,) * result.rounds  # the 50 s are not in the first round
    assert clock.log == ["sync", "fn", "sync"] * result.rounds


def test_unsynchronized_queued_work_would_be_invisible(clock: FakeClock) -> None:
    """Why sync matters: without it, asynchronous work times as nothing (one clock tick)."""
    result = measure(clock.task("fn", [3.0], queued=True), warmup=0)
    assert result.median == CLOCK_TICK


def test_zero_durations_count_as_one_clock_tick(clock: FakeClock) -> None:
    result = measure(clock.task("fn", [0.0]))
    assert result.times == (CLOCK_TICK,) * 6
    assert result.stop_reason == "precision"


def test_to_dict_is_json_ready(clock: FakeClock) -> None:
    data = json.loads(json.dumps(measure(clock.task("fn", [2.0])).to_dict()))
    assert data["median"] == 2.0
    assert "per_step" not in data  # a plain callable has no breakdown
    assert data["stop_reason"] == "precision"
    assert (data["rounds"], data["warmup"], data["total"], data["iqr"]) == (6, 1, 12.0, 0.0)
    assert (data["ci_low"], data["ci_high"], data["confidence"]) == (2.0, 2.0, 0.95)


def test_a_breakdown_reports_each_part_as_a_median_with_its_interval() -> None:
    """Parts read like the whole call: the median of the rounds, the interval from 6 rounds on
    (95%), none below; a part the pipeline did not report is null."""
    six = PartTimes((0.5, 0.1, 0.2, 0.3, 0.4, 0.6), 0.95)
    breakdown = LatencyBreakdown(load=1.5, first_call=3.0, per_step=six,
                                 text_encoding=PartTimes((0.2, 0.1), 0.95), vae_decode=None)
    result = TimingResult((2.0,) * 6, warmup=1, confidence=0.95, stop_reason="precision",
                          breakdown=breakdown)
    data = json.loads(json.dumps(result.to_dict()))
    assert (data["median"], data["load"], data["first_call"]) == (2.0, 1.5, 3.0)
    assert data["per_step"] == pytest.approx(0.35)
    assert (data["per_step_ci_low"], data["per_step_ci_high"]) == (0.1, 0.6)
    assert data["per_step_times"] == list(six.times)
    assert data["text_encoding"] == pytest.approx(0.15)
    assert data["text_encoding_ci_low"] is None and data["text_encoding_ci_high"] is None
    assert data["vae_decode"] is None
    assert set(BREAKDOWN_FIGURES) <= set(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_rounds": 0},
        {"min_rounds": 5, "max_rounds": 4},
        {"max_time": 0},
        {"max_time": float("nan")},
        {"rel_precision": -0.1},
        {"confidence": 1.0},
        {"warmup": -1},
        {"warmup": True},
    ],
)
def test_measure_rejects_bad_arguments_before_calling(clock: FakeClock, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure(clock.task("fn", [1.0]), **kwargs)
    assert clock.log == []


def _fails_on_call(number: int) -> Callable[[], None]:
    calls = itertools.count(1)

    def fn() -> None:
        if next(calls) == number:
            raise RuntimeError(f"boom on call {number}")

    return fn


@pytest.mark.parametrize("number", [1, 3])  # in the warm-up, in a timed round
def test_exceptions_of_the_callable_propagate(number: int) -> None:
    with pytest.raises(RuntimeError, match=f"boom on call {number}"):
        measure(_fails_on_call(number))
    with pytest.raises(RuntimeError, match=f"boom on call {number}"):
        measure_speedup(_fails_on_call(number), no_sync, factor=1.0)


# --- measure_speedup on the fake clock -------------------------------------------------------


def test_pairs_alternate_their_order_after_warmup(clock: FakeClock) -> None:
    result = measure_speedup(
        clock.task("test", [1.0]), clock.task("base", [2.0]), factor=1.5, warmup=1
    )
    assert clock.log[:2] == ["base", "test"]  # warm-up
    assert clock.log[2:] == ["base", "test", "test", "base", "base", "test"]
    # 3 pairs: the plan's first look; identical ratios leave no doubt.
    assert (result.verdict, result.stop_reason, result.pairs) == ("pass", "verdict", 3)
    assert (result.method, result.error_rate, result.interval_confidence) == ("t", 0.025, 0.997)
    assert (result.ratio, result.ci_low, result.ci_high) == (2.0, 2.0, 2.0)
    assert (result.median_test, result.median_base, result.elapsed) == (1.0, 2.0, 9.0)


def test_a_clear_shortfall_fails_at_the_first_look(clock: FakeClock) -> None:
    result = measure_speedup(clock.task("test", [1.0]), clock.task("base", [2.0]), factor=3.0)
    assert (result.verdict, result.stop_reason, result.pairs) == ("fail", "verdict", 3)


def test_an_undecidable_claim_is_inconclusive_within_max_time(clock: FakeClock) -> None:
    """Ratios alternate 1.8 and 2.2: the interval of their mean always contains 2.0."""
    result = measure_speedup(
        clock.task("test", [1.0]), clock.task("base", [1.8, 2.2]), factor=2.0, max_time=20.0
    )
    assert (result.verdict, result.stop_reason) == ("inconclusive", "max_time")
    assert result.elapsed <= 20.0
    assert result.pairs == 6  # 18.0 s done; the slowest pair so far, 3.2 s, would overrun
    assert "inconclusive for min_speedup 2.00x" in result.reason("none")


def test_an_unsettled_claim_stops_after_the_plans_last_look(clock: FakeClock) -> None:
    result = measure_speedup(clock.task("test", [1.0]), clock.task("base", [1.8, 2.2]),
                             factor=2.0, max_time=1000.0)
    assert (result.verdict, result.stop_reason, result.pairs) == ("inconclusive", "max_pairs", 30)


def test_min_pairs_defers_the_first_look(clock: FakeClock) -> None:
    result = measure_speedup(clock.task("test", [1.0]), clock.task("base", [2.0]), factor=1.5,
                             min_pairs=6)
    assert (result.verdict, result.pairs) == ("pass", 6)


def test_a_budget_too_short_for_a_verdict_fails_before_timing_anything(clock: FakeClock) -> None:
    """Pairs of 3 s, 3 pairs for the first look: 9 s needed, 8 s given. The warm-up pair was
    the first call, perhaps cold: a second warm pair confirms before the refusal."""
    with pytest.raises(TimeBudgetTooShort) as info:
        measure_speedup(clock.task("test", [1.0]), clock.task("base", [2.0]), factor=1.5,
                        max_time=8.0)
    assert clock.log == ["base", "test"] * 2  # the warm-up pair and its confirmation only
    assert str(info.value) == (
        "a speed-up verdict needs at least 3 timed pairs, about 9.00 s at the warm-up pair's "
        "3.00 s, but the time budget is 8.00 s: no verdict could be reached. Set "
        "--sdmem-max-time 11 or more (max_time=11)")
    assert (info.value.pair_time, info.value.min_pairs, info.value.suggested) == (3.0, 3, 11)


def test_a_cold_first_call_does_not_count_against_the_budget(clock: FakeClock) -> None:
    """Compilation in the first call (100 s): the second warm pair shows what a pair costs."""
    result = measure_speedup(clock.task("test", [100.0] + [1.0] * 50), clock.task("base", [2.0]),
                             factor=1.5, max_time=10.0)
    assert clock.log[:4] == ["base", "test"] * 2
    assert (result.verdict, result.pairs) == ("pass", 3)


def test_the_budget_is_a_bound_when_pairs_get_slower(clock: FakeClock) -> None:
    """A neighbour starts work after the first timed pair: pairs take 3 s, then 9 s. After
    12 s no pair starts (the slowest so far would overrun), though the 3 pairs a verdict needs
    are then out of reach: the budget wins, the run is inconclusive without an interval."""
    result = measure_speedup(clock.task("test", [1.0, 1.0, 3.0]),
                             clock.task("base", [2.0, 2.0, 6.0]), factor=1.5, max_time=12.0)
    assert (result.verdict, result.stop_reason, result.pairs) == ("inconclusive", "max_time", 2)
    assert result.elapsed == 12.0
    assert (result.ci_low, result.method) == (None, "none")


def test_a_slow_callable_is_refused_up_front_on_the_real_clock() -> None:
    """Real time, a callable made slow on purpose (a 50 ms sleep): 3 pairs need 0.3 s."""
    calls: list[str] = []

    def slow(name: str) -> Callable[[], None]:
        def run() -> None:
            calls.append(name)
            time.sleep(0.05)
        return run

    start = time.perf_counter()
    with pytest.raises(TimeBudgetTooShort, match=r"Set --sdmem-max-time 1 or more"):
        measure_speedup(slow("test"), slow("base"), factor=1.0, max_time=0.2)
    assert calls == ["base", "test"] * 2
    assert time.perf_counter() - start < 0.5
    result = measure_speedup(slow("test"), slow("base"), factor=0.5, max_time=1.0)
    assert result.verdict == "pass"
    assert result.elapsed <= 1.0


def test_speedup_sync_counts_queued_device_work(clock: FakeClock) -> None:
    result = measure_speedup(
        clock.task("test", [1.0], queued=True),
        clock.task("base", [3.0], queued=True),
        factor=2.5,
        sync=clock.sync,
    )
    assert (result.verdict, result.ratio) == ("pass", pytest.approx(3.0))


def test_zero_durations_give_a_ratio_of_one(clock: FakeClock) -> None:
    instant = clock.task("instant", [0.0])
    assert measure_speedup(instant, instant, factor=1.0).verdict == "pass"
    assert measure_speedup(instant, instant, factor=1.01).verdict == "fail"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": 0},
        {"factor": -2.0},
        {"factor": float("nan")},
        {"factor": float("inf")},
        {"factor": True},
        {"factor": "2"},
        {"factor": 2.0, "min_pairs": 2},
        {"factor": 2.0, "min_pairs": 31},
        {"factor": 2.0, "warmup": 0},
        {"factor": 2.0, "max_time": -1},
    ],
)
def test_speedup_rejects_bad_arguments_before_calling(clock: FakeClock, kwargs: dict) -> None:
    fn = clock.task("fn", [1.0])
    with pytest.raises(ValueError):
        measure_speedup(fn, fn, **kwargs)
    assert clock.log == []


# --- synchronizer ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_host_devices_need_no_sync(device: str) -> None:
    assert synchronizer(device) is no_sync


def test_cuda_sync_waits_on_the_named_device() -> None:
    import torch

    sync = synchronizer("cuda:1")
    assert isinstance(sync, functools.partial)
    assert (sync.func, sync.args) == (torch.cuda.synchronize, ("cuda:1",))


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot synchronize device 'tpu'"):
        synchronizer("tpu")


# --- verdicts on real computation ------------------------------------------------------------

# np.sin over 20k doubles: ~0.1 ms a pass on this kind of machine, and numpy ufuncs run on one
# thread, so a neighbour's tests compete with ours for a core but our own threads do not. A
# unit is 60 passes (~6 ms): rounds of a millisecond were either untouched or preempted whole
# (5-20x) on a loaded machine, heavy tails that left most runs inconclusive; rounds of several
# scheduler slices share a neighbour's load more evenly (3 of 3 runs passed at load 6).
_DATA = np.linspace(0.0, 1.0, 20_000)
_OUT = np.empty_like(_DATA)
_PASSES_PER_UNIT = 60
_REPEATS = 12
_BUDGET = 5.0  # seconds per verdict; a verdict on idle cores takes ~20 ms


def _work(units: int) -> Callable[[], None]:
    """A fixed amount of real computation (not sleep): ``units`` times the same passes."""

    def run() -> None:
        for _ in range(units * _PASSES_PER_UNIT):
            np.sin(_DATA, out=_OUT)

    return run


def _verdicts(fn_test: Callable[[], None], fn_base: Callable[[], None], factor: float) -> list:
    return [
        measure_speedup(fn_test, fn_base, factor=factor, max_time=_BUDGET) for _ in range(_REPEATS)
    ]


def _lines(results: list) -> str:
    return "\n".join(r.reason("base") for r in results)


def _right_and_never_wrong(results: list, right: str) -> None:
    """Never the wrong verdict; the right one in at least 3 runs of 4. The rest may be
    inconclusive: a neighbour's burst in rounds of a millisecond makes the ratios heavy-tailed,
    and the plan then waits for the distribution-free interval, which it may not reach."""
    verdicts = [r.verdict for r in results]
    assert all(v in (right, "inconclusive") for v in verdicts), _lines(results)
    assert verdicts.count(right) >= 0.75 * len(verdicts), _lines(results)


def test_twice_as_fast_passes_min_speedup_1_5() -> None:
    _right_and_never_wrong(_verdicts(_work(1), _work(2), 1.5), "pass")


def test_twice_as_fast_fails_min_speedup_3() -> None:
    _right_and_never_wrong(_verdicts(_work(1), _work(2), 3.0), "fail")


def test_itself_fails_min_speedup_1_3_within_the_budget() -> None:
    same = _work(1)
    for _ in range(_REPEATS):
        start = time.perf_counter()
        result = measure_speedup(same, same, factor=1.3, max_time=_BUDGET)
        wall = time.perf_counter() - start
        assert result.verdict != "pass", result.section()  # inconclusive is a failure too
        assert wall <= _BUDGET + 0.5, f"{wall:.2f} s for a {_BUDGET} s budget"


def test_measure_real_work_reports_a_consistent_summary() -> None:
    result = measure(_work(1), max_time=1.0)
    assert result.stop_reason in ("precision", "max_time")
    assert result.rounds >= 3
    assert result.total <= 1.1  # the budget is kept by predicting the next round, not by a cut
    assert min(result.times) <= result.median <= max(result.times)
