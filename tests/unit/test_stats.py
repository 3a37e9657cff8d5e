"""Statistics of timing claims on known data: exact order-statistic ranks, their coverage,
verdicts at the boundaries, and the words a failure is reported in."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import statistics
from fractions import Fraction

import pytest

from benchmarks.verdict_simulation import SYNTHETIC, Scenario, synthetic, t_track_wrong
from pytest_sdmem.measuring.speedup import DEFAULT_PLAN, SequentialPlan, SpeedupResult
from pytest_sdmem.measuring.stats import (
    _wrong_pass_probability,
    format_percent,
    iqr,
    median,
    median_ci,
    median_ci_ranks,
    min_sample_size,
    sequential_confidence,
    student_t_isf,
    student_t_sf,
)


def test_median_and_iqr_on_known_values() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert iqr([float(v) for v in range(1, 10)]) == 4.0  # quartiles 3 and 7, as numpy's default
    assert iqr([5.0]) == 0.0


@pytest.mark.parametrize("fn", [median, iqr])
def test_no_values_is_an_error(fn) -> None:
    with pytest.raises(ValueError, match="no values"):
        fn([])


@pytest.mark.parametrize(
    ("n", "lower", "upper", "coverage"),
    [
        (6, 0, 5, 1 - 2 / 64),  # the smallest sample at 95%: [min, max]
        (9, 1, 7, 1 - 2 * 10 / 512),
        (10, 1, 8, 1 - 2 * 11 / 1024),  # 2nd and 9th of 10, the textbook case
        (20, 5, 14, 0.9586105346679688),  # 6th and 15th of 20 (tables of the sign test)
        (30, 9, 20, 0.9572260547429323),  # 10th and 21st of 30
    ],
)
def test_median_ci_ranks_match_the_tables(n: int, lower: int, upper: int, coverage: float) -> None:
    ranks = median_ci_ranks(n, 0.95)
    assert ranks is not None
    assert (ranks.lower, ranks.upper) == (lower, upper)
    assert ranks.coverage == pytest.approx(coverage, rel=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_median_ci_ranks_are_the_narrowest_with_enough_coverage(confidence: float) -> None:
    def coverage(n: int, excluded: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(excluded)) / 2**n

    for n in range(min_sample_size(confidence), 150):
        ranks = median_ci_ranks(n, confidence)
        assert ranks is not None
        excluded = ranks.lower + 1
        assert ranks.upper == n - 1 - ranks.lower
        assert coverage(n, excluded) >= confidence
        assert coverage(n, excluded + 1) < confidence, f"a narrower interval suffices at n={n}"


@pytest.mark.parametrize(("confidence", "smallest"), [(0.9, 5), (0.95, 6), (0.99, 8), (0.5, 2)])
def test_smallest_sample_with_an_interval(confidence: float, smallest: int) -> None:
    assert min_sample_size(confidence) == smallest
    assert median_ci_ranks(smallest - 1, confidence) is None


def test_median_ci_takes_the_order_statistics() -> None:
    values = [7.0, 3.0, 10.0, 1.0, 5.0, 9.0, 2.0, 8.0, 4.0, 6.0]
    assert median_ci(values, 0.95) == (2.0, 9.0)


def test_median_ci_covers_the_true_median_as_often_as_it_says() -> None:
    """Skewed data like round times: exponential, whose median is ln 2."""
    rng = random.Random(1234)
    trials = 4000
    covered = sum(
        lo <= math.log(2) <= hi
        for lo, hi in (median_ci([rng.expovariate(1.0) for _ in range(10)]) for _ in range(trials))
    )
    assert covered / trials == pytest.approx(1 - 22 / 1024, abs=0.01)


def test_median_ci_with_too_few_values_says_how_many_it_needs() -> None:
    with pytest.raises(ValueError, match=" interval of the median needs at least 6 values, got 5"):
        median_ci([1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1, True])
def test_confidence_outside_the_open_unit_interval_is_an_error(confidence: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        median_ci_ranks(10, confidence)


def _result(**changes: object) -> SpeedupResult:
    """The failure of the issue's example: 2.31x against a claim of 2.50x."""
    fields: dict[str, object] = dict(
        factor=2.5,
        error_rate=0.025,
        times_test=(4.11,) * 12,
        times_base=(9.5,) * 12,
        ratios=(2.31,) * 12,
        median_test=4.11,
        median_base=9.5,
        ratio=2.31,
        ci_low=2.27,
        ci_high=2.35,
        pairs=12,
        verdict="fail",
        method="t",
        heavy_tailed=False,
        stop_reason="verdict",
        elapsed=163.4,
        interval_confidence=0.997,
    )
    fields.update(changes)
    return SpeedupResult(**fields)  # type: ignore[arg-type]


def test_reason_of_a_failure_is_one_line_with_every_figure() -> None:
    assert _result().reason("none") == (
        "speedup 2.31x (99.70% CI 2.27-2.35, t-test on log-ratios, 12 pairs) below min_speedup "
        "2.50x against 'none' "
        "(median 4.11 s vs 9.50 s)"
    )


def test_reason_of_a_pass_and_of_an_inconclusive_run() -> None:
    assert " meets min_speedup 2.00x against 'fp16' " in _result(factor=2.0, verdict="pass").reason(
        "fp16"
    )
    line = _result(factor=2.3, verdict="inconclusive", stop_reason="max_time").reason("none")
    assert (
        "inconclusive for min_speedup 2.30x against 'none': the interval still contains "
        "2.30x after 163.40 s (median 4.11 s vs 9.50 s)" in line
    )
    assert "\n" not in line


def test_from_pairs_computes_ratios_medians_and_interval() -> None:
    times_test = [1.0, 1.0, 1.0, 1.0]
    times_base = [2.0, 2.2, 1.8, 2.0]
    result = SpeedupResult.from_pairs(
        times_test, times_base, factor=1.3, stop_reason="verdict", elapsed=20.0
    )
    assert result.ratios == (2.0, 2.2, 1.8, 2.0)
    logs = [math.log(r) for r in result.ratios]
    mean, sd = sum(logs) / 4, statistics.stdev(logs)
    half = student_t_isf(DEFAULT_PLAN.look_alpha, 3) * sd / 2
    assert result.ratio == pytest.approx(math.exp(mean))  # the geometric mean ratio
    assert result.ci_low == pytest.approx(math.exp(mean - half))
    assert result.ci_high == pytest.approx(math.exp(mean + half))
    assert (result.median_test, result.median_base, result.pairs) == (1.0, 2.0, 4)
    assert (result.method, result.verdict, result.interval_confidence) == ("t", "pass", 0.997)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ratios"] == list(result.ratios)
    assert (data["verdict"], data["method"], data["error_rate"]) == ("pass", "t", 0.025)
    assert {"ratio", "ci_low", "ci_high", "median_test", "median_base", "pairs"} <= data.keys()


def test_from_pairs_with_too_few_pairs_has_no_interval() -> None:
    result = SpeedupResult.from_pairs(
        [1.0] * 2, [3.0] * 2, factor=2.0, stop_reason="max_time", elapsed=12.0
    )
    assert (result.ci_low, result.ci_high, result.verdict) == (None, None, "inconclusive")
    assert (result.method, result.interval_confidence) == ("none", None)
    assert result.reason("none") == (
        "speedup 3.00x (no interval: too few pairs, 2 pairs) inconclusive for min_speedup 2.00x "
        "against 'none': no interval yet after 12.00 s (median 1.00 s vs 3.00 s)"
    )


@pytest.mark.parametrize(
    ("times_test", "times_base", "match"),
    [
        ([1.0, 1.0], [1.0], "same positive number"),
        ([], [], "same positive number"),
        ([0.0], [1.0], "positive"),
    ],
)
def test_from_pairs_rejects_inconsistent_times(times_test, times_base, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SpeedupResult.from_pairs(
            times_test, times_base, factor=2.0, stop_reason="verdict", elapsed=1.0
        )


def test_section_lists_every_pair_with_its_order() -> None:
    result = SpeedupResult.from_pairs(
        [0.5, 0.25], [1.0, 1.0], factor=2.0, stop_reason="max_time", elapsed=2.8
    )
    lines = result.section().splitlines()
    assert lines[2].split() == ["1", "base", "1.00", "s", "500.0", "ms", "2.00x"]
    assert lines[3].split() == ["2", "test", "1.00", "s", "250.0", "ms", "4.00x"]
    assert "stopped by max_time" in lines[0]
    assert lines[-1].endswith("verdict inconclusive against 2.00x")


def test_format_percent() -> None:
    assert (format_percent(0.95), format_percent(0.999), format_percent(0.9)) == (
        "95%",
        "99.9%",
        "90%",
    )


# --- the sign track: looking after every pair, exactly ------------------------------------


def _wrong_passes_by_enumeration(level: float, first: int, last: int) -> Fraction:
    """Every below/above path of ``last`` ratios around a claim at the true median, one by one."""
    wrong = 0
    for path in itertools.product((0, 1), repeat=last):
        for n in range(first, last + 1):
            ranks = median_ci_ranks(n, level)
            if ranks is not None and sum(path[:n]) <= ranks.lower:
                wrong += 1
                break
    return Fraction(wrong, 2**last)


@pytest.mark.parametrize(("level", "first", "last"), [(0.95, 6, 12), (0.9, 4, 11), (0.99, 8, 8)])
def test_wrong_pass_probability_counts_every_path(level: float, first: int, last: int) -> None:
    assert _wrong_pass_probability(level, first, last) == _wrong_passes_by_enumeration(
        level, first, last)


def test_one_interval_per_pair_would_pass_a_true_claim_three_times_too_often() -> None:
    assert _wrong_pass_probability(0.95, 6, 6) == Fraction(1, 64)  # one look: within 2.5%
    assert _wrong_pass_probability(0.95, 6, 30) > Fraction(6, 100)  # 30 looks: not


@pytest.mark.parametrize("last", [6, 12, 20, 30, 40])
def test_sequential_confidence_keeps_all_looks_within_the_ask(last: int) -> None:
    level = sequential_confidence(0.95, 6, last)
    assert _wrong_pass_probability(level, 6, last) <= Fraction(1, 40)
    # The narrowest such level on its 0.0001 grid: one step lower would not keep it.
    if level > 0.95:
        assert _wrong_pass_probability(round(level - 0.0001, 4), 6, last) > Fraction(1, 40)
    assert min_sample_size(level) <= 8


def test_a_single_look_keeps_the_confidence_as_asked() -> None:
    assert sequential_confidence(0.95, 6, 6) == 0.95
    with pytest.raises(ValueError, match="need 1 <= first <= last"):
        sequential_confidence(0.95, 10, 6)


def test_a_very_high_confidence_gets_a_finer_level() -> None:
    level = sequential_confidence(0.9999, 15, 30)
    assert 0.9999 < level < 1
    assert _wrong_pass_probability(level, 15, 30) <= (1 - Fraction("0.9999")) / 2


def test_the_sign_track_keeps_its_share_exactly() -> None:
    level = DEFAULT_PLAN.sign_level
    assert level == 0.99743
    assert 2 * _wrong_pass_probability(level, 10, 30) <= Fraction(DEFAULT_PLAN.sign_share)


# --- the sequential plan ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "df", "tail"),
    [(1.0, 1, 0.25), (12.706, 1, 0.025), (4.303, 2, 0.025), (4.032, 5, 0.005),
     (2.228, 10, 0.025), (3.106, 11, 0.005), (0.0, 7, 0.5)],
)
def test_student_t_tail_matches_the_tables(t: float, df: int, tail: float) -> None:
    assert student_t_sf(t, df) == pytest.approx(tail, abs=3e-5)
    assert student_t_sf(-t, df) == pytest.approx(1 - tail, abs=3e-5)


@pytest.mark.parametrize("df", range(1, 13))
def test_student_t_inverse(df: int) -> None:
    for alpha in (DEFAULT_PLAN.look_alpha, 0.025, 0.3):
        assert student_t_sf(student_t_isf(alpha, df), df) == pytest.approx(alpha, rel=1e-9)
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_sf(1.0, 0)


def test_a_look_before_the_first_gives_no_interval() -> None:
    look = DEFAULT_PLAN.look([2.0, 2.0], 1.5)
    assert (look.verdict, look.method, look.ci_low) == ("inconclusive", "none", None)
    look = DEFAULT_PLAN.look([2.0, 2.02, 1.98], 1.5)  # a quiet machine: three pairs suffice
    assert (look.verdict, look.method, look.heavy_tailed) == ("pass", "t", False)


def test_an_outlier_defers_the_verdict_to_the_distribution_free_interval() -> None:
    """One preempted round (a ratio of 20 among ratios of 2) makes the data heavy-tailed:
    no verdict before pair 10, then the order-statistic interval ([min, max] at 10 pairs)."""
    quiet = [2.0, 2.02, 1.98, 2.01, 1.99, 2.0, 2.03, 1.97, 2.0]
    for n in range(3, 10):
        look = DEFAULT_PLAN.look([*quiet[: n - 1], 20.0], 1.5)
        assert (look.verdict, look.method, look.heavy_tailed) == ("inconclusive", "none", True)
    look = DEFAULT_PLAN.look([*quiet, 20.0], 1.5)  # [min, max] at 99.743% per look
    assert (look.verdict, look.method) == ("pass", "sign")
    assert (look.ci_low, look.ci_high, look.estimate) == (1.97, 20.0, 2.0)


def test_a_plan_is_checked() -> None:
    with pytest.raises(ValueError, match="first_look"):
        SequentialPlan(first_look=13)
    with pytest.raises(ValueError, match="sign_share"):
        SequentialPlan(sign_share=0.03)


def _runs(name: str, runs: int, seed: int) -> Scenario:
    return synthetic(name, SYNTHETIC[name], runs, DEFAULT_PLAN.max_pairs, seed)


def _wrong_rate(plan: SequentialPlan, scenario: Scenario) -> float:
    verdicts = [plan.first_verdict(row.tolist(), scenario.true_ratio)[0].verdict
                for row in scenario.ratios]
    return sum(v != "inconclusive" for v in verdicts) / len(verdicts)


def _bound(runs: int, rate: float = DEFAULT_PLAN.error_rate) -> float:
    """The rate plus three standard errors of a binomial share over ``runs``."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / runs)


def test_the_t_track_counts_both_directions_together() -> None:
    """A claim equal to the true ratio: any verdict is wrong, pass or fail. The t track keeps
    both together within its share of 1.75% (normal log-ratios, what its level was calibrated
    on); at twice its per-side level, which keeps each direction alone within that share, it
    errs more often; at a 95% t-test every look, in over 10% of runs: the simulation can tell
    them apart."""
    runs = 4000
    scenario = _runs("lognormal 3%", runs, 1)
    ratios = scenario.ratios[:, : DEFAULT_PLAN.last_t_look] / scenario.true_ratio
    share = DEFAULT_PLAN.error_rate - DEFAULT_PLAN.sign_share
    assert t_track_wrong(DEFAULT_PLAN, ratios) <= _bound(runs, share)
    doubled = dataclasses.replace(DEFAULT_PLAN, look_alpha=2 * DEFAULT_PLAN.look_alpha)
    assert t_track_wrong(doubled, ratios) > _bound(runs, share)
    assert t_track_wrong(dataclasses.replace(DEFAULT_PLAN, look_alpha=0.025), ratios) > 0.10


@pytest.mark.parametrize("name", ["lognormal 10% (loaded)", "stalls, exp. mean 0.1 s",
                                  "heavy tails: 5% of calls 5-20x", "drift: +1% per call"])
def test_wrong_verdicts_stay_within_the_rate_under_rough_noise(name: str) -> None:
    assert _wrong_rate(DEFAULT_PLAN, _runs(name, 1500, 2)) <= _bound(1500)


def test_a_clear_claim_settles_in_four_pairs_on_a_quiet_machine() -> None:
    """20% from the true ratio either way, 1% noise per call (the tiny pipeline on an idle
    machine): right, and by pair 4, in at least 95% of runs; never wrong."""
    scenario = _runs("lognormal 1% (quiet)", 1000, 3)
    for claim, right in ((scenario.true_ratio / 1.2, "pass"), (scenario.true_ratio * 1.2, "fail")):
        results = [DEFAULT_PLAN.first_verdict(row.tolist(), claim) for row in scenario.ratios]
        assert all(look.verdict in (right, "inconclusive") for look, _ in results)
        fast = sum(look.verdict == right and n <= 4 for look, n in results)
        assert fast / len(results) >= 0.95, (claim, fast)


def test_an_inconclusive_run_at_the_pair_limit_says_more_time_would_not_help() -> None:
    line = _result(factor=2.3, verdict="inconclusive", stop_reason="max_pairs", pairs=12,
                   ratios=(2.31,) * 12).reason("none")
    assert "the interval still contains 2.30x after 12 pairs, the most a measurement runs " in line
