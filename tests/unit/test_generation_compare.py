"""Figures of different generations are not comparable: never a regression nor an improvement.

A baseline saved at 32x32 compared with a run at 64x64 once reported "REGRESSED +384.8%". Each
record carries the generation settings that change its figures; records whose settings differ
(or a baseline that did not record them) are listed as not comparable, with the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_sdmem.cli import main
from pytest_sdmem.gate.baseline import compare_runs, load_baseline, load_results
from pytest_sdmem.gate.results import RunResults, TestRecord

NODE = "tests/techniques/test_vae.py::test_vae_slicing"
GENERATION = {"model": "tiny", "height": 32, "width": 32, "steps": 1, "batch_size": 1,
              "guidance_scale": 7.5, "scheduler": None, "dtype": "float32",
              "safety_checker": False}


def run_file(path: Path, peak: int, generation: dict[str, Any] | None) -> Path:
    record = TestRecord(nodeid=NODE, outcome="passed", device="cpu", device_name="cpu",
                        model="tiny", technique="vae_slicing",
                        memory={"peak_allocated_bytes": peak, "peak_reserved_bytes": peak},
                        generation=generation)
    return RunResults({"device": "cpu", "device_name": "cpu"}, [record]).write(path)


@pytest.mark.parametrize(("base", "head", "reason"), [
    (GENERATION, {**GENERATION, "height": 64, "width": 64},
     "generated differently: height 32 in the baseline, 64 now, width 32 in the baseline, "
     "64 now"),
    (GENERATION, {**GENERATION, "dtype": "float16", "batch_size": 4},
     "generated differently: batch_size 1 in the baseline, 4 now, dtype 'float32' in the "
     "baseline, 'float16' now"),
    (None, GENERATION, "the baseline does not record the generation settings (written by an "
                       "older pytest-sdmem): save a new baseline"),
], ids=["size", "batch-and-dtype", "old-baseline"])
def test_another_generation_is_not_comparable(
    tmp_path: Path, base: dict[str, Any] | None, head: dict[str, Any], reason: str
) -> None:
    comparison = compare_runs(load_baseline(run_file(tmp_path / "b.json", 10**6, base)),
                              load_results(run_file(tmp_path / "h.json", 5 * 10**6, head)))
    assert comparison.deltas == [] and comparison.passed
    assert [(str(n.key.nodeid), n.reason) for n in comparison.not_compared] == [(NODE, reason)]
    assert f"Not comparable (figures not compared):\n  {NODE} [tiny, vae_slicing]: {reason}" \
        in comparison.render_text()


def test_the_same_generation_is_compared(tmp_path: Path) -> None:
    comparison = compare_runs(load_baseline(run_file(tmp_path / "b.json", 10**6, GENERATION)),
                              load_results(run_file(tmp_path / "h.json", 5 * 10**6,
                                                    dict(GENERATION))))
    assert comparison.not_compared == [] and not comparison.passed


def test_sdmem_compare_exits_0_on_another_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = run_file(tmp_path / "b.json", 10**6, GENERATION)
    head = run_file(tmp_path / "h.json", 5 * 10**6, {**GENERATION, "steps": 2})
    assert main(["compare", str(base), str(head)]) == 0
    assert "steps 1 in the baseline, 2 now" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["results", "symlink", "hard link"])
def test_sdmem_output_may_not_be_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    base = run_file(tmp_path / "b.json", 10**6, GENERATION)
    head = run_file(tmp_path / "h.json", 10**6, GENERATION)
    before = base.read_bytes()
    output = tmp_path / "out.json"
    if how == "symlink":
        output.symlink_to(base)
    elif how == "hard link":
        output.hardlink_to(base)
    else:
        output = base
    assert main(["compare", str(base), str(head), "-o", str(output)]) == 2
    assert main(["report", str(base), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"sdmem: error: -o {output} is the same file as BASE.json {base}" in err
    assert f"sdmem: error: -o {output} is the same file as RESULTS.json {base}" in err
    assert base.read_bytes() == before
