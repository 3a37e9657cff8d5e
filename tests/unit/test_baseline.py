"""Baseline comparison: saved runs read back from real files, figures judged with tolerances.

Every comparison here goes through files written by ``RunResults.write`` and read by
``load_baseline``, as the plugin and the ``sdmem`` command do, so the JSON round trip is covered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_sdmem.base.units import UnitError
from pytest_sdmem.gate.baseline import (
    REFRESH_HINT,
    BaselineError,
    Comparison,
    compare_runs,
    load_baseline,
    load_results,
)
from pytest_sdmem.gate.deltas import RecordKey
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import MemorySection
from pytest_sdmem.gate.tolerances import (
    DEFAULT_TOLERANCE_SPEC,
    DEFAULT_TOLERANCES,
    Tolerance,
    ToleranceError,
    parse_tolerances,
)

CARD = "NVIDIA A10G"
NODE = "tests/techniques/test_claims.py::test_vae_slicing"


def record(nodeid: str = NODE, peak: int = 3_000_000_000, **fields: object) -> TestRecord:
    """A measured GPU record; ``fields`` override any field of its JSON object."""
    values: dict[str, object] = {
        "outcome": "passed",
        "device": "cuda:0",
        "device_name": CARD,
        "model": "tiny",
        "technique": "vae_slicing",
        "memory": {"peak_allocated_bytes": peak, "peak_reserved_bytes": peak},
    }
    values.update(fields)
    return TestRecord.from_dict({"nodeid": nodeid, **values})


def saved(path: Path, *records: TestRecord, card: str = CARD) -> Path:
    RunResults({"device": "cuda:0", "device_name": card}, list(records)).write(path)
    return path


def compare_files(tmp_path: Path, base: list[TestRecord], head: list[TestRecord],
                  tolerances: str | None = None, head_card: str = CARD) -> Comparison:
    """Save both runs, read them back as the gate does, and compare."""
    base_path = saved(tmp_path / "base.json", *base)
    head_path = saved(tmp_path / "head.json", *head, card=head_card)
    return compare_runs(
        load_baseline(base_path), load_results(head_path), parse_tolerances(tolerances)
    )


def test_doubled_peak_is_a_regression_with_the_figures(tmp_path: Path) -> None:
    comparison = compare_files(tmp_path, [record(peak=3_000_000_000)], [record(peak=6_000_000_000)])
    assert not comparison.passed
    allocated = next(d for d in comparison.regressions if d.figure == "peak_allocated")
    assert (allocated.base, allocated.head, allocated.change) == (3e9, 6e9, 3e9)
    assert allocated.change_pct == pytest.approx(100.0)
    assert allocated.message == (
        "peak_allocated 6.00 GB vs baseline 3.00 GB (+3.00 GB, +100.0%) exceeds tolerance 5%"
    )
    # The plugin fails exactly this test with these lines.
    failing = [d.message for d in comparison.for_nodeid(NODE) if d.status == "regression"]
    assert len(failing) == 2  # allocated and reserved
    assert comparison.for_nodeid("tests/other.py::test_x") == []


def test_small_change_within_tolerance_passes(tmp_path: Path) -> None:
    comparison = compare_files(tmp_path, [record(peak=3_000_000_000)], [record(peak=3_120_000_000)])
    assert comparison.passed
    assert {d.status for d in comparison.deltas} == {"unchanged"}
    assert "(+0.12 GB, +4.0%) within tolerance 5%" in comparison.deltas[0].message


def test_improvement_is_reported_with_the_refresh_hint(tmp_path: Path) -> None:
    comparison = compare_files(tmp_path, [record(peak=3_000_000_000)], [record(peak=1_500_000_000)])
    assert comparison.passed
    assert [d.figure for d in comparison.improvements] == ["peak_allocated", "peak_reserved"]
    assert comparison.improvements[0].message.endswith(
        "(-1.50 GB, -50.0%) improved beyond tolerance 5%: refresh the baseline"
    )
    assert REFRESH_HINT in comparison.render_text()
    assert "--sdmem-save" in REFRESH_HINT


def test_latency_and_speedup_directions(tmp_path: Path) -> None:
    base = record(latency={"median": 4.0}, speedup={"ratio": 2.5, "ci_low": 2.4, "ci_high": 2.6})
    slower = record(latency={"median": 4.8}, speedup={"ratio": 2.0, "ci_low": 1.9, "ci_high": 2.1})
    comparison = compare_files(tmp_path, [base], [slower])
    by_figure = {d.figure: d for d in comparison.deltas}
    assert by_figure["latency"].status == "regression"
    assert by_figure["latency"].message == (
        "latency 4.80 s vs baseline 4.00 s (+0.80 s, +20.0%) exceeds tolerance 10%"
    )
    # A lower speed-up is the regression; a higher one an improvement.
    assert by_figure["speedup"].status == "regression"
    assert by_figure["speedup"].message.startswith(
        "speedup 2.00x vs baseline 2.50x (-0.50x, -20.0%)"
    )
    faster = compare_files(tmp_path, [slower], [base])
    assert {d.figure: d.status for d in faster.deltas}["speedup"] == "improvement"


def test_a_slower_step_is_a_regression_of_its_own(tmp_path: Path) -> None:
    """Each figure of the latency breakdown is compared, lower being better, with the latency
    tolerance: a step 30% slower fails the gate while the whole generation's median stays."""
    parts = {"load": 2.0, "first_call": 9.0, "text_encoding": 0.05, "vae_decode": 0.4}
    base = record(latency={"median": 4.0, "per_step": 0.100, **parts})
    head = record(latency={"median": 4.0, "per_step": 0.130, **parts})
    comparison = compare_files(tmp_path, [base], [head])
    assert [d.figure for d in comparison.regressions] == ["per_step"]
    assert comparison.regressions[0].message == (
        "per_step 130.0 ms vs baseline 100.0 ms (+30.0 ms, +30.0%) exceeds tolerance 10%")
    assert {d.figure: d.status for d in comparison.deltas} == {
        "peak_allocated": "unchanged", "peak_reserved": "unchanged", "latency": "unchanged",
        "load": "not judged", "first_call": "not judged", "per_step": "regression",
        "text_encoding": "unchanged", "vae_decode": "unchanged"}
    assert [d.figure for d in compare_files(tmp_path, [head], [base]).improvements] == [
        "per_step"]
    assert compare_files(tmp_path, [base], [head], "latency=50%").passed


def test_load_and_first_call_are_shown_not_judged_unless_asked(tmp_path: Path) -> None:
    """Load and first call are one reading each, moved between runs by the page cache and
    compile caches: by default a 4x slower load is shown, with its change, and fails nothing;
    ``startup=...`` judges them like any figure, and ``latency=off`` turns the medians off."""
    base = record(latency={"median": 4.0, "per_step": 0.1, "load": 2.0, "first_call": 9.0})
    head = record(latency={"median": 4.0, "per_step": 0.1, "load": 8.0, "first_call": 4.5})
    comparison = compare_files(tmp_path, [base], [head])
    assert comparison.passed
    by_figure = {d.figure: d for d in comparison.deltas}
    assert by_figure["load"].status == by_figure["first_call"].status == "not judged"
    assert by_figure["load"].message == (
        "load 8.00 s vs baseline 2.00 s (+6.00 s, +300.0%) not judged: startup is off (one "
        "reading; --sdmem-tolerance startup=... judges it)")
    assert "2 not judged" in comparison.summary()
    judged = compare_files(tmp_path, [base], [head], "startup=40%")
    assert [d.figure for d in judged.regressions] == ["load"]
    assert [d.figure for d in judged.improvements] == ["first_call"]
    assert compare_files(tmp_path, [base], [head], "startup=6.5s").passed
    slower = record(latency={"median": 8.0, "per_step": 0.2})
    off = compare_files(tmp_path, [base], [slower], "latency=off")
    assert off.passed
    assert {d.figure: d.status for d in off.deltas}["latency"] == "not judged"


def test_off_is_a_word_not_a_typo_away() -> None:
    assert parse_tolerances("vram=OFF").vram == Tolerance("vram", judged=False)
    assert str(parse_tolerances("speedup=off")) == "vram=5%,latency=10%,startup=off,speedup=off"
    for spec in ("startup=of", "startup=offf", "startup=0ff", "startup=off%", "startup=5GB",
                 "starup=off"):
        with pytest.raises(ToleranceError):
            parse_tolerances(spec)


def test_a_baseline_without_the_breakdown_compares_the_median(tmp_path: Path) -> None:
    """A results file written before the breakdown (or a latency from min_speedup's rounds,
    which has none) still reads, and only the figures both sides have are compared."""
    old = record(latency={"median": 4.0})
    new = record(latency={"median": 4.1, "per_step": 0.1, "vae_decode": None})
    comparison = compare_files(tmp_path, [old], [new])
    assert comparison.passed
    assert [d.figure for d in comparison.deltas] == ["peak_allocated", "peak_reserved", "latency"]


def test_absolute_tolerances(tmp_path: Path) -> None:
    base = [record(peak=3_000_000_000, latency={"median": 2.0})]
    within = [record(peak=3_150_000_000, latency={"median": 2.4})]
    beyond = [record(peak=3_250_000_000, latency={"median": 2.6})]
    spec = "vram=200MB,latency=0.5s"
    assert compare_files(tmp_path, base, within, spec).passed
    regressed = compare_files(tmp_path, base, beyond, spec)
    regressed_figures = {d.figure for d in regressed.regressions}
    assert regressed_figures == {"peak_allocated", "peak_reserved", "latency"}
    assert "exceeds tolerance 200.00 MB" in regressed.regressions[0].message


def test_new_and_gone_tests_are_listed(tmp_path: Path) -> None:
    kept, gone, new = record(), record("tests/t.py::test_gone"), record("tests/t.py::test_new")
    comparison = compare_files(tmp_path, [kept, gone], [kept, new])
    assert comparison.new == [RecordKey("tests/t.py::test_new", "tiny", "vae_slicing")]
    assert comparison.gone == [RecordKey("tests/t.py::test_gone", "tiny", "vae_slicing")]
    text = comparison.render_text()
    assert "New since the baseline" in text and "tests/t.py::test_new [tiny, vae_slicing]" in text
    assert "Gone since the baseline" in text and "tests/t.py::test_gone" in text


def test_another_card_is_not_compared_and_says_why(tmp_path: Path) -> None:
    comparison = compare_files(
        tmp_path, [record(peak=1_000_000_000)], [record(peak=9_000_000_000, device_name="")],
        head_card="NVIDIA H100 80GB HBM3",
    )
    assert comparison.passed and comparison.deltas == []
    assert comparison.new == [] and comparison.gone == []
    assert [n.key.nodeid for n in comparison.not_compared] == [NODE]
    assert comparison.warnings == [
        "1 test not compared: baseline measured on 'NVIDIA A10G', this run on "
        "'NVIDIA H100 80GB HBM3' (figures are never compared across cards)"
    ]


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (record(model="sd15"), "baseline measured model 'tiny', this run 'sd15'"),
        (record(device="cpu"), "baseline measured on cuda, this run on cpu"),
        (record(estimated=True), "this run's figures are estimates"),
    ],
    ids=["model", "device-type", "estimated"],
)
def test_unlike_records_are_not_compared(tmp_path: Path, head: TestRecord, reason: str) -> None:
    comparison = compare_files(tmp_path, [record()], [head])
    assert comparison.deltas == [] and comparison.new == [] and comparison.gone == []
    assert reason in comparison.not_compared[0].reason
    assert reason in comparison.warnings[0]


def test_comparison_markdown_is_a_table(tmp_path: Path) -> None:
    comparison = compare_files(tmp_path, [record(nodeid="t.py::test[a|b]")],
                               [record(nodeid="t.py::test[a|b]", peak=6_000_000_000)])
    table = [line for line in comparison.render_markdown().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(comparison.deltas)
    for line in table:  # escaped pipes do not split cells
        assert line.replace("\\|", "").count("|") == 10
    assert "regression" in table[2]


VALID = {"schema_version": 1, "environment": {}, "results": [{"nodeid": "t.py::test"}]}


def with_record(**fields: object) -> bytes:
    return json.dumps({**VALID, "results": [{"nodeid": "t.py::test", **fields}]}).encode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps(VALID).encode()[:25], "not valid JSON"),  # truncated
        (b"", "not valid JSON"),
        (json.dumps({**VALID, "schema_version": 2}).encode(), "schema_version 2 is not supported"),
        (b'{"name": "left-pad", "version": "1.0.0"}', "not a pytest-sdmem results file"),
        (b'<?xml version="1.0"?><testsuites/>', "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a pytest-sdmem results file"),
        (with_record(memory="3 GB"), "results[0].memory is not an object"),
        (with_record(memory={"peak_allocated_bytes": "3 GB"}),
         "results[0].memory.peak_allocated_bytes is not a number"),
        (with_record(speedup={"ratio": 2.0, "ci_low": 1.5, "ci_high": None}),
         "results[0].speedup has one of ci_low and ci_high"),
        (with_record(speedup={"ci_low": 1.9}), "results[0].speedup.ratio is not a number"),
        (with_record(latency={"median": 1.0, "per_step": "fast"}),
         "results[0].latency.per_step is not a number"),
    ],
    ids=["corrupt", "truncated", "empty", "foreign-schema", "package-json", "junit-xml", "binary",
         "memory-not-object", "figure-not-number", "speedup-one-bound", "speedup-no-ratio",
         "per-step-not-number"],
)
def test_unusable_baseline_is_a_usage_error_and_left_untouched(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "baseline.json"
    path.write_bytes(content)
    before = path.stat().st_mtime_ns
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    assert str(info.value).startswith(f"baseline {path}: ")
    assert problem in str(info.value)
    assert path.read_bytes() == content and path.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json"]  # no temp files left


def test_missing_baseline_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=r"baseline .*nope\.json: cannot read it"):
        load_baseline(tmp_path / "nope.json")


def test_default_tolerances_are_documented() -> None:
    spec = "vram=5%,latency=10%,startup=off,speedup=5%"
    assert str(DEFAULT_TOLERANCES) == DEFAULT_TOLERANCE_SPEC == spec
    assert parse_tolerances(None) == DEFAULT_TOLERANCES


def test_tolerance_spec_overrides_only_what_it_names() -> None:
    tolerances = parse_tolerances(" VRAM = 200MB , speedup=0.1x")
    assert tolerances.vram == Tolerance("vram", absolute=200_000_000)
    assert tolerances.speedup == Tolerance("speedup", absolute=0.1)
    assert tolerances.latency == DEFAULT_TOLERANCES.latency
    assert parse_tolerances("latency=250ms").latency == Tolerance("latency", absolute=0.25)
    assert parse_tolerances("latency=2.5%").latency == Tolerance("latency", relative=0.025)
    assert str(parse_tolerances("vram=1GiB,latency=800us")) == (
        "vram=1.07 GB,latency=800.0 µs,startup=off,speedup=5%"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty tolerance spec"),
        ("vrma=5%", "expected comma-separated METRIC=VALUE with METRIC one of vram, latency"),
        ("vram", "expected comma-separated METRIC=VALUE"),
        ("vram=5", "vram takes a percentage such as '5%', a size such as '200MB', or 'off'"),
        ("latency=3GB", "latency takes a percentage such as '5%', a duration"),
        ("speedup=1.5", "speedup takes a percentage such as '5%', a ratio such as '0.1x', or "
         "'off'"),
        ("vram=-5%", "vram takes a percentage"),
        ("vram=5%,vram=6%", "given twice"),
        ("vram=\uff15%", "vram takes a percentage"),  # a full-width 5 is not a digit here
        ("latency=\uff13ms", "latency takes a percentage"),
    ],
)
def test_bad_tolerance_specs_are_refused_with_the_accepted_forms(spec: str, message: str) -> None:
    with pytest.raises(ToleranceError, match=re.escape(message)) as info:
        parse_tolerances(spec)
    assert isinstance(info.value, UnitError)  # one family of "bad value" errors for the glue


def test_the_gate_judges_each_record_as_the_whole_comparison_does(tmp_path: Path) -> None:
    """``Gate.judge`` compares one record with its baseline record only; what it finds for each
    test is what the comparison of the whole run finds for it (regressed, unchanged, another
    model, estimated, new, a test the baseline holds twice)."""
    from pytest_sdmem.gate.judge import Gate

    base = [record(peak=1_000_000_000), record(nodeid="t.py::test_same"),
            record(nodeid="t.py::test_model"), record(nodeid="t.py::test_est"),
            record(nodeid="t.py::test_twice", peak=1_000_000_000),
            record(nodeid="t.py::test_twice", peak=2_000_000_000)]
    head = [record(peak=9_000_000_000), record(nodeid="t.py::test_same"),
            record(nodeid="t.py::test_model", model="sd15"),
            record(nodeid="t.py::test_est", estimated=True), record(nodeid="t.py::test_new"),
            record(nodeid="t.py::test_twice", peak=4_000_000_000)]
    gate = Gate.load(saved(tmp_path / "base.json", *base), None,
                     {"device": "cuda:0", "device_name": CARD})
    whole = compare_runs(gate.baseline, RunResults(gate.environment, head), gate.tolerances)
    for rec in head:
        assert gate.judge(rec) == whole.for_nodeid(rec.nodeid), rec.nodeid
    assert [d.status for d in gate.judge(head[0])] == ["regression", "regression"]
    assert gate.judge(head[2]) == gate.judge(head[3]) == gate.judge(head[4]) == []
    assert {d.base for d in gate.judge(head[5])} == {2_000_000_000}


#: Results files written by pytest-sdmem before the record sections were typed (main at
#: f8befd2, on the CPU with the tiny model): budgets, a snapshot, latency with its breakdown and
#: a speed-up (measured); a run compared against it (compared); estimates with a GPU's
#: calibrated overhead (estimated); and one of main at e8210a5, before the model families, with
#: an inconclusive speed-up.
EARLIER_FILES = sorted((Path(__file__).parent / "data" / "results-before-typed-sections")
                       .glob("*.json"))


@pytest.mark.parametrize("path", EARLIER_FILES, ids=lambda path: path.stem)
def test_an_earlier_results_file_reads_into_sections_and_is_written_back_unchanged(
    tmp_path: Path, path: Path
) -> None:
    """A saved baseline stays a baseline: read into typed sections, it is written back byte
    for byte, every key in its place."""
    run = load_baseline(path)
    assert all(isinstance(r.memory, MemorySection) for r in run.results)
    assert run.write(tmp_path / path.name).read_bytes() == path.read_bytes()
