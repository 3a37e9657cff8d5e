"""pytest-xdist: every worker's measured tests end up in the controller's one results file."""

from __future__ import annotations

import json

import pytest


def test_two_workers_merge_every_result(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.parametrize("mib", [1, 2, 4, 8, 16, 32])
        @pytest.mark.max_vram("1GB")
        def test_alloc(mib):
            x = torch.ones(mib * 2**20, dtype=torch.uint8)

        @pytest.mark.max_vram("1MB")
        def test_over():
            x = torch.ones(8 * 2**20, dtype=torch.uint8)
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--sdmem-json=merged.json", "-rA",
                                           f"--junitxml={pytester.path / 'j.xml'}")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["peak memory 8.39 MB*exceeded max_vram 1.00 MB*",
                                 "VRAM *test_over*"])
    records = json.loads((pytester.path / "merged.json").read_text())["results"]
    assert len(records) == 7, "N tests in, N results out"
    by_id = {r["nodeid"]: r for r in records}
    for mib in (1, 2, 4, 8, 16, 32):
        mem = by_id[f"test_two_workers_merge_every_result.py::test_alloc[{mib}]"]["memory"]
        assert mem["peak_allocated_bytes"] - mem["start_allocated_bytes"] == mib * 2**20
    # The controller prints one table with every worker's tests.
    assert sum("test_alloc[" in line for line in result.outlines if " cpu " in line) == 6
