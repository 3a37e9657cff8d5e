"""``sdmem calibrate``: an estimate's overhead on one GPU model, from a run on it.

The GPU side of these runs is written by hand (no GPU here): what is tested is the pairing, the
arithmetic, what is refused, and that the table it writes is what the budgets file reads back.
tests/plugin/test_estimate_mode.py pairs real estimates end to end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pytest_sdmem.cli import main
from pytest_sdmem.gate.budgets import BudgetError, load_budgets
from pytest_sdmem.gate.calibration import CalibrationError, append_to_budgets, calibrate
from pytest_sdmem.gate.results import RunResults, TestRecord

GPU = "NVIDIA H100 80GB HBM3"
MIB = 2**20


def gpu_run(*tests: tuple[str, int, int, int | None], card: str = GPU) -> RunResults:
    """Records of a --gpu run: (nodeid, allocated, reserved, process) per test."""
    records = [
        TestRecord(nodeid=nodeid, outcome="passed", device="cuda:0", device_name=card,
                   model="sd15", technique="fp16",
                   memory={"peak_allocated_bytes": allocated, "peak_reserved_bytes": reserved,
                           "process_peak_bytes": process, "num_ooms": 0})
        for nodeid, allocated, reserved, process in tests
    ]
    return RunResults({"device": "cuda:0", "device_name": card, "torch": "2.11.0+cu128",
                       "driver_version": "570.86"}, records)


def estimate_run(*tests: tuple[str, int, int], overhead: int | None = None) -> RunResults:
    """Records of a --sdmem-estimate run: (nodeid, estimated allocated, estimated reserved),
    the reserved figure with ``overhead`` added if that run had one."""
    records = [
        TestRecord(nodeid=nodeid, outcome="passed", device="cuda (estimated)", model="sd15",
                   technique="fp16", estimated=True,
                   memory={"peak_allocated_bytes": allocated,
                           "peak_reserved_bytes": reserved + (overhead or 0)},
                   estimate={"overhead": {"reserved_bytes": overhead} if overhead else None})
        for nodeid, allocated, reserved in tests
    ]
    return RunResults({"device": "cpu", "device_name": "cpu"}, records)


GIB = 2**30
ESTIMATES = estimate_run(("t::a", 2 * GIB, 2 * GIB + 100 * MIB),
                         ("t::b", 3 * GIB, 3 * GIB + 50 * MIB),
                         ("t::off", 1 * GIB, 1 * GIB))


def test_overhead_is_the_largest_excess_over_the_estimated_reserved() -> None:
    calibration = calibrate(
        gpu_run(("t::a", 2 * GIB + 10 * MIB, 2 * GIB + 400 * MIB, 3 * GIB),
                ("t::b", 3 * GIB - 20 * MIB, 3 * GIB + 350 * MIB, 4 * GIB + 700 * MIB)),
        ESTIMATES)
    assert [p.nodeid for p in calibration.pairs] == ["t::a", "t::b"]
    assert calibration.overhead("reserved") == 300 * MIB  # a: 300 MiB, b: 300 MiB
    assert calibration.overhead("process") == GIB + 650 * MIB  # b: 4.68 GiB - 3.05 GiB
    assert calibration.device_name == GPU
    assert "2 tests" in calibration.source and "torch 2.11.0+cu128" in calibration.source


def test_an_overhead_the_estimate_run_applied_comes_off_again() -> None:
    gpu = gpu_run(("t::a", 2 * GIB, 2 * GIB + 400 * MIB, None))
    with_overhead = estimate_run(("t::a", 2 * GIB, 2 * GIB + 100 * MIB), overhead=250 * MIB)
    assert calibrate(gpu, with_overhead).overhead("reserved") == 300 * MIB


def test_a_pair_whose_allocated_figures_disagree_is_left_out_not_absorbed() -> None:
    calibration = calibrate(
        gpu_run(("t::a", 2 * GIB, 2 * GIB + 200 * MIB, None),
                # The estimate says 1 GiB, the GPU 1.5: an overhead of 1.5 GiB would hide it.
                ("t::off", GIB + GIB // 2, 2 * GIB + GIB // 2, None)),
        ESTIMATES)
    assert calibration.overhead("reserved") == 100 * MIB
    assert calibration.overhead("process") is None
    (nodeid, why), = calibration.excluded
    assert nodeid == "t::off" and "-33.3% off the measured allocated peak" in why


def test_an_estimate_above_the_measured_reserved_gives_zero_never_negative() -> None:
    calibration = calibrate(gpu_run(("t::a", 2 * GIB, 2 * GIB, None)), ESTIMATES)
    assert calibration.overhead("reserved") == 0
    assert "\nreserved = 0  #" in calibration.to_toml()


def test_the_table_round_trips_through_the_budgets_file(tmp_path: Path) -> None:
    calibration = calibrate(
        gpu_run(("t::a", 2 * GIB, 2 * GIB + 100 * MIB + 300 * MIB + 1, 3 * GIB)), ESTIMATES)
    budgets_path = tmp_path / "budgets.toml"
    budgets_path.write_text('# our budgets\n[default]\nx = "1 GB"  # keep me\n')
    budgets_path.chmod(0o640)
    append_to_budgets(budgets_path, calibration)
    assert budgets_path.stat().st_mode & 0o777 == 0o640  # the file's own mode, kept
    text = budgets_path.read_text()
    assert text.startswith('# our budgets\n[default]\nx = "1 GB"  # keep me\n\n')
    overhead = load_budgets(budgets_path).overhead(GPU)
    assert overhead is not None
    # Rounded up to the MiB: never below what was measured.
    assert overhead.reserved == 301 * MIB
    assert overhead.process == 3 * GIB - (2 * GIB + 100 * MIB)
    assert overhead.calibrated.startswith("sdmem calibrate, 1 tests of the GPU run on " + GPU)
    assert "#   t::a: 2.15 GB / 2.15 GB (+0.0%)" in text


def test_appending_twice_is_refused_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    calibration = calibrate(gpu_run(("t::a", 2 * GIB, 3 * GIB, None)), ESTIMATES)
    budgets_path = tmp_path / "budgets.toml"
    budgets_path.write_text('[default]\nx = "1 GB"\n')
    append_to_budgets(budgets_path, calibration)
    before = budgets_path.read_bytes()
    with pytest.raises(CalibrationError, match=f"already has an overhead for {GPU!r}"):
        append_to_budgets(budgets_path, calibration)
    broken = tmp_path / "broken.toml"
    broken.write_text("[default\n")
    with pytest.raises(BudgetError, match="not valid TOML"):
        append_to_budgets(broken, calibration)
    assert budgets_path.read_bytes() == before and broken.read_text() == "[default\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.toml", "budgets.toml"]


@pytest.mark.parametrize(("gpu", "estimates", "message"), [
    (RunResults({}, [TestRecord("t::a", "passed", "cpu", memory={"peak_allocated_bytes": 1})]),
     ESTIMATES, "has no test measured on CUDA"),
    (RunResults({}, [*gpu_run(("t::a", GIB, GIB, None)).results,
                     *gpu_run(("t::b", GIB, GIB, None), card="NVIDIA L4").results]),
     ESTIMATES, "mixes GPU models"),
    (gpu_run(("t::a", GIB, GIB, None)), RunResults({}, []), "has no estimated test"),
    (gpu_run(("t::z", GIB, GIB, None)), ESTIMATES, r"no test .* pairs .*no test is in both"),
])
def test_runs_that_cannot_calibrate_say_why(gpu: RunResults, estimates: RunResults,
                                            message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        calibrate(gpu, estimates)


def test_the_command_prints_a_table_the_budgets_file_reads(tmp_path: Path, capsys) -> None:
    gpu_path = gpu_run(("t::a", 2 * GIB, 3 * GIB, None)).write(tmp_path / "gpu.json")
    est_path = ESTIMATES.write(tmp_path / "est.json")
    assert main(["calibrate", str(gpu_path), str(est_path)]) == 0
    budgets_path = tmp_path / "budgets.toml"
    budgets_path.write_text('[default]\nx = "1 GB"\n' + capsys.readouterr().out)
    overhead = load_budgets(budgets_path).overhead(GPU)
    assert overhead is not None
    assert (overhead.reserved, overhead.process) == (GIB - 100 * MIB, None)
    assert main(["calibrate", str(est_path), str(gpu_path)]) == 2
    assert capsys.readouterr().err.startswith("sdmem: error: est.json has no test measured")
    (tmp_path / "bad.json").write_text("{")
    assert main(["calibrate", str(tmp_path / "bad.json"), str(est_path)]) == 2
    assert "GPU run" in capsys.readouterr().err


@pytest.mark.parametrize("card", ["NVIDIA 😀", 'A "quoted" \\ name', "NVIDIA\x7fX",
                                  "NVIDIA\nreserved = 0", "NVIDIA\x01X"])
def test_any_gpu_name_and_environment_give_a_table_the_budgets_file_reads(
    tmp_path: Path, card: str
) -> None:
    gpu = gpu_run(("t::a", 2 * GIB, 3 * GIB, None), card=card)
    gpu.environment["torch"] = "2.11\n[default]\nx = 1"
    budgets_path = tmp_path / "budgets.toml"
    budgets_path.write_text('[default]\nx = "1 GB"\n')
    append_to_budgets(budgets_path, calibrate(gpu, ESTIMATES))
    overhead = load_budgets(budgets_path).overhead(card)
    assert overhead is not None and overhead.reserved == GIB - 100 * MIB
    assert "[default]\nx = 1" in overhead.calibrated  # kept as text, never as TOML


def test_a_test_listed_twice_is_refused() -> None:
    twice = estimate_run(("t::a", 2 * GIB, 2 * GIB), ("t::a", 2 * GIB, 3 * GIB))
    with pytest.raises(CalibrationError, match="lists 't::a' twice"):
        calibrate(gpu_run(("t::a", 2 * GIB, 3 * GIB, None)), twice)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("estimate", [1], r"results\[0\]\.estimate is not an object"),
    ("estimate", {"overhead": [1]}, r"estimate\.overhead is not an object"),
    ("estimate", {"overhead": {"reserved_bytes": float("inf")}}, "reserved_bytes is not a number"),
    ("estimate", {"overhead": {"reserved_bytes": -5}}, "reserved_bytes is not a number"),
    ("estimated", "yes", "estimated is not true or false"),
    ("memory", {"peak_allocated_bytes": float("inf")}, "peak_allocated_bytes is not a number"),
])
def test_malformed_estimate_fields_are_bad_input_not_a_traceback(
    tmp_path: Path, capsys, field: str, value: object, message: str
) -> None:
    gpu_path = gpu_run(("t::a", 2 * GIB, 3 * GIB, None)).write(tmp_path / "gpu.json")
    broken = estimate_run(("t::a", 2 * GIB, 2 * GIB))
    setattr(broken.results[0], field, value)
    est_path = broken.write(tmp_path / "est.json")
    assert main(["calibrate", str(gpu_path), str(est_path)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["report", str(est_path)]) == 2


def test_appending_through_a_symbolic_link_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text('[default]\nx = "1 GB"\n')
    link = tmp_path / "budgets.toml"
    link.symlink_to(target)
    append_to_budgets(link, calibrate(gpu_run(("t::a", 2 * GIB, 3 * GIB, None)), ESTIMATES))
    assert link.is_symlink() and load_budgets(target).overhead(GPU) is not None


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_a_read_only_budgets_file_is_left_alone(tmp_path: Path) -> None:
    budgets_path = tmp_path / "budgets.toml"
    budgets_path.write_text('[default]\nx = "1 GB"\n')
    budgets_path.chmod(0o444)
    with pytest.raises(CalibrationError, match="is not writable"):
        append_to_budgets(budgets_path,
                          calibrate(gpu_run(("t::a", 2 * GIB, 3 * GIB, None)), ESTIMATES))
    assert budgets_path.read_text() == '[default]\nx = "1 GB"\n'
