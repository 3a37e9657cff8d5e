"""benchmarks/estimate_vs_gpu.py, the comparison a GPU session runs for issue 14, runs its whole
plumbing on the CPU with the tiny model: estimates in worker processes, each row measured
through the plugin's tracker, the table and the JSON lines, a failed row named and counted.
A GPU session's device minutes are too few to find its bugs there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import estimate_vs_gpu  # noqa: E402


def test_the_gate_matrix_is_issue_14s() -> None:
    """24 gate rows (6 technique sets x batch 1 and 4 x with and without the safety checker)
    at 512x512, then 14 rows within 10%; both filters keep the order."""
    gate = estimate_vs_gpu.rows("gate")
    assert len(gate) == 24 and {r.size for r in gate} == {512}
    assert {(r.technique, r.batch, r.safety_checker) for r in gate} == {
        (t, b, c) for t in ("none", "sdpa", "fp16", "fp16+sdpa", "bf16", "bf16+sdpa")
        for b in (1, 4) for c in (True, False)}
    everything = estimate_vs_gpu.rows("all")
    assert everything[:24] == gate and len(everything) == 38
    assert {r.bound for r in everything[24:]} == {"10%"}
    only = estimate_vs_gpu.rows("gate", ["sdpa"], size=64)
    assert [(r.batch, r.safety_checker, r.size) for r in only] == [
        (1, True, 64), (4, True, 64), (1, False, 64), (4, False, 64)]


@pytest.mark.parametrize(("estimate", "measured", "bound", "ok"), [
    (102.9, 100, "gate", True), (103.1, 100, "gate", False), (98.1, 100, "gate", True),
    (97.9, 100, "gate", False), (109.9, 100, "10%", True), (89, 100, "10%", False),
    (None, 100, "gate", True), (100, None, "gate", True),
])
def test_bounds(estimate: float | None, measured: float | None, bound: str, ok: bool) -> None:
    assert estimate_vs_gpu.within({"estimate": estimate, "measured": measured,
                                   "bound": bound}) is ok


def test_the_tiny_model_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two workers estimate, the CPU tracker measures; a set the CPU cannot run is a row with
    its reason, not a crash. The CPU's figures are not a CUDA card's, so the bounds may fail:
    the exit status is not what this checks, the plumbing is."""
    out = tmp_path / "out"
    status = estimate_vs_gpu.main([
        "--device", "cpu", "--model", "tiny", "--size", "64", "--rows", "all",
        "--only", "none,fp16+model_offload", "--jobs", "2", "--cache", str(tmp_path / "cache"),
        "--out", str(out)])
    assert status in (0, 1)
    records = [json.loads(line) for line in (out / "estimate_vs_gpu.jsonl").open()]
    none = [r for r in records if r["technique"] == "none"]
    assert len(none) == 4
    for r in none:
        assert r["measured"] > r["measured_start"] > 0 and r["estimate"] > r["estimate_start"] > 0
        assert r["peak_place"]["module"] and r["device"] == "cpu" and r["notes"] == []
    by_batch = {(r["batch"], r["safety_checker"]): r["measured"] for r in none}
    assert by_batch[(4, True)] > by_batch[(1, True)]  # four images need more than one
    [offload] = [r for r in records if r["technique"] == "fp16+model_offload"]
    assert "measured" not in offload and any("CUDA" in note for note in offload["notes"])
    table = (out / "estimate_vs_gpu.md").read_text()
    assert table.count("| none | 64x64 |") == 4 and "fp16+model_offload" in table
    assert table.rstrip().endswith("rows outside their bound.")


def test_a_row_that_fails_is_named_and_fails_the_run(tmp_path: Path) -> None:
    """An image side the UNet cannot take (not a multiple of its down-sampling) fails the
    estimate and the measurement of each row: both say why, the run exits 1."""
    out = tmp_path / "out"
    status = estimate_vs_gpu.main([
        "--device", "cpu", "--model", "tiny", "--size", "60", "--rows", "gate", "--only", "none",
        "--jobs", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert status == 1
    records = [json.loads(line) for line in (out / "estimate_vs_gpu.jsonl").open()]
    assert records and all(r["notes"] for r in records)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert estimate_vs_gpu.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--only", "nonsense"], ["--steps", "0"], ["--size", "-64"],
                                  ["--jobs", "two"], ["--rows", "some"]])
def test_bad_arguments_are_usage_errors(argv: list[str], tmp_path: Path) -> None:
    """Nothing selected, or a number that is not one, stops before any work with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        status = estimate_vs_gpu.main(["--device", "cpu", "--out", str(tmp_path), *argv])
        raise SystemExit(status)
    assert exit_info.value.code == 2
    assert not (tmp_path / "estimate_vs_gpu.jsonl").exists()


def test_ctrl_c_keeps_the_rows_measured(tmp_path: Path) -> None:
    """Interrupted after its first row, the run keeps that row in the JSON lines, writes the
    table of what it has, says so, and exits 130."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks/estimate_vs_gpu.py"), "--device", "cpu",
         "--model", "tiny", "--size", "64", "--rows", "gate", "--only", "none,fp16",
         "--jobs", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = out / "estimate_vs_gpu.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.exists() and jsonl.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    kept = jsonl.read_text().count("\n")
    assert 1 <= kept < 8
    assert f"Interrupted after {kept} of 8 rows." in (out / "estimate_vs_gpu.md").read_text()
    assert "Traceback" not in stderr
