"""``--sdmem-snapshot-dir`` on the CPU: a failed budget names the frame of the largest tensor."""

from __future__ import annotations

import json

import pytest


def test_the_snapshot_section_names_the_allocating_frame(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_snap="""
        import pytest, torch

        def make_activations():
            return torch.ones(64 * 2**20, dtype=torch.uint8)

        @pytest.mark.max_vram("32MB")
        def test_over():
            small = torch.ones(2**20, dtype=torch.uint8)
            big = make_activations()

        @pytest.mark.max_vram("1GB")
        def test_under():
            x = torch.ones(2**20, dtype=torch.uint8)
        """
    )
    result = pytester.runpytest("--sdmem-snapshot-dir=snaps", "-rA", "--sdmem-json=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "memory snapshot: snaps*.json",
        "*sdmem: memory snapshot*",
        "*67.11 MB*",
        "*test_snap.py:4 in make_activations*",
    ])
    files = list((pytester.path / "snaps").iterdir())
    assert len(files) == 1, "only the failed test leaves a snapshot"
    saved = json.loads(files[0].read_text())
    assert saved["allocations"][0]["bytes"] == 64 * 2**20
    assert saved["allocations"][0]["frames"][0]["name"] == "make_activations"
    records = {r["nodeid"]: r for r in json.loads((pytester.path / "r.json").read_text())
               ["results"]}
    assert records["test_snap.py::test_over"]["snapshot"] is not None
    assert records["test_snap.py::test_under"]["snapshot"] is None


def test_the_snapshot_stops_before_the_speedup_rounds(
    pytester: pytest.Pytester, model_cache
) -> None:
    """The baseline pipeline of min_speedup runs after the recording: the snapshot's peak is
    the test's own generation (the tracker's), not the timing rounds'."""
    pytester.makepyfile(
        test_snap_speed="""
        import pytest

        @pytest.mark.max_vram("1KB")
        @pytest.mark.min_speedup(0.25)
        def test_both(sd_pipe):
            sd_pipe(num_inference_steps=1, height=32, width=32)
        """
    )
    # A small generation and room for its pairs: the claim (0.25x of itself) settles in the
    # plan's first looks even on a loaded machine, where 10 s did not fit the pairs it needs.
    result = pytester.runpytest("--sdmem-snapshot-dir=snaps", f"--sdmem-cache-dir={model_cache}",
                                "--sdmem-max-time=60", "--sdmem-json=r.json")
    result.assert_outcomes(failed=1)
    record = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert record["speedup"]["verdict"] == "pass"
    assert record["snapshot"]["peak_bytes"] == record["memory"]["peak_allocated_bytes"]


def test_a_snapshot_that_cannot_be_written_is_said_and_the_session_goes_on(
    pytester: pytest.Pytester,
) -> None:
    """The snapshot directory was checked at configure; a test that removes it (or a disk that
    fills) before a budget fails leaves no file, and the failure says where it could not be
    written instead of ending the session with an internal error."""
    pytester.makepyfile(
        test_snap="""
        import os, shutil, pytest, torch

        @pytest.mark.max_vram("32MB")
        def test_over():
            if os.path.isdir("snaps"):
                shutil.rmtree("snaps")
            open("snaps", "w").close()  # a file where the directory is to be
            big = torch.ones(64 * 2**20, dtype=torch.uint8)

        def test_after():
            pass
        """
    )
    result = pytester.runpytest("--sdmem-snapshot-dir=snaps", "-rA", "--sdmem-json=r.json")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*could not write the snapshot to snaps*"])
    record = next(r for r in json.loads((pytester.path / "r.json").read_text())["results"]
                  if r["nodeid"] == "test_snap.py::test_over")
    assert record["snapshot"] is not None and record["snapshot"]["path"] is None
