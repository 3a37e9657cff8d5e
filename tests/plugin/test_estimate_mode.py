"""``--sdmem-estimate`` end to end: budgets checked against the estimated CUDA peak, and what
needs a real run skipped with the reason (on ``tiny``, to keep it fast; sd15 is in tests/unit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_budgets_against_the_estimate(pytester: pytest.Pytester, model_cache: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.max_vram("1GB")
        @pytest.mark.sd_technique("fp16")
        def test_fits(sd_pipe):
            images = sd_pipe(batch_size=2)
            assert images.shape == (2, 64, 64, 3)

        @pytest.mark.max_vram("1KB")
        def test_too_small(sd_pipe):
            sd_pipe()

        def test_looks_at_pixels(sd_pipe):
            assert sd_pipe().mean() > 0

        @pytest.mark.min_speedup(1.5)
        def test_speed(sd_pipe):
            sd_pipe()

        @pytest.mark.max_vram("1GB")
        @pytest.mark.min_speedup(1.5)
        def test_speed_and_memory(sd_pipe):
            sd_pipe()

        @pytest.mark.max_vram("1KB")
        @pytest.mark.min_speedup(1.5)
        def test_speed_and_too_much_memory(sd_pipe):
            sd_pipe()

        @pytest.mark.sd_technique("jit_trace")
        def test_traced(sd_pipe):
            sd_pipe()

        @pytest.mark.max_vram("1GB")
        def test_no_pipeline():
            pass
        """
    )
    result = pytester.runpytest("--sdmem-estimate", "--sdmem-model=tiny", "-rA", "-vv",
                                f"--sdmem-cache-dir={model_cache}", "--sdmem-json=r.json")
    # A budget checked on the estimate is the test's outcome; only what was not checked skips.
    result.assert_outcomes(passed=2, failed=2, skipped=4)
    result.stdout.fnmatch_lines_random([
        "*::test_fits PASSED (estimated)*",
        "VRAM (estimated) *test_too_small - peak VRAM * (allocated, cuda (estimated)*) exceeded "
        "max_vram 1.00 KB*",
        # The speed claim cannot be timed, but its memory budget is still checked.
        "VRAM (estimated) *test_speed_and_too_much_memory - peak VRAM * exceeded max_vram 1.00 KB*",
        "PASSED (estimated) *::test_speed_and_memory",
        "*sdmem: not checked on the estimate*",
        "min_speedup needs real timings: skipped with --sdmem-estimate",
        "SKIPPED *the images of an estimated generation have no pixels*",
        "SKIPPED *min_speedup needs real timings*",
        "SKIPPED *cannot estimate 'jit_trace'*",
        "SKIPPED *estimates sd_pipe generations, and this test has none*",
        "*test_fits*(est.)*passed (estimated)*",
        "sdmem: estimates stand for NVIDIA A100-SXM4-80GB (sm80,*(the default; "
        "--sdmem-estimate-for)",
    ])
    records = {r["nodeid"].split("::")[1]: r
               for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    fits = records["test_fits"]
    assert fits["estimated"] is True and fits["technique"] == "fp16"
    assert fits["estimate"]["estimated_allocated_bytes"] == fits["memory"]["peak_allocated_bytes"]
    assert fits["estimate"]["generation"]["batch_size"] == 2
    assert fits["estimate"]["peak_place"]["allocated_bytes"] == (
        fits["estimate"]["estimated_allocated_bytes"])


def test_a_skip_for_pixels_never_hides_an_estimate_over_budget(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    pytester.makepyfile(
        """
        import numpy as np
        import pytest

        @pytest.mark.max_vram("1KB")
        def test_over_then_pixels(sd_pipe):
            assert np.isfinite(sd_pipe()).all()

        @pytest.mark.max_vram("1GB")
        def test_within_then_pixels(sd_pipe):
            assert np.isfinite(sd_pipe()).all()

        def test_pipeline_object(sd_pipe):
            sd_pipe.pipe.unet
        """
    )
    result = pytester.runpytest("--sdmem-estimate", "--sdmem-model=tiny", "-rA", "-vv",
                                f"--sdmem-cache-dir={model_cache}")
    result.assert_outcomes(failed=1, passed=1, skipped=1)
    result.stdout.fnmatch_lines_random([
        "VRAM (estimated) *test_over_then_pixels - peak VRAM * exceeded max_vram 1.00 KB*",
        "PASSED (estimated) *::test_within_then_pixels",
        "*no pixels*",
        "SKIPPED *sd_pipe.pipe*needs a real run*",
    ])


def test_reserved_budgets_of_an_estimate_take_the_gpus_calibrated_overhead(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    from pytest_sdmem.cli import main
    from pytest_sdmem.gate.results import RunResults

    card = "NVIDIA Test GPU"
    budgets = pytester.path / "budgets.toml"
    budgets.write_text('[default]\nunused = "1 GB"\n')
    test_file = """
        import pytest

        @pytest.mark.max_vram({limit}, metric="reserved")
        def test_reserved(sd_pipe):
            sd_pipe()

        @pytest.mark.max_vram("1GB")
        def test_allocated(sd_pipe):
            sd_pipe()
        """
    pytester.makepyfile(test_file.format(limit='"1GB"'))
    args = ("--sdmem-estimate", "--sdmem-model=tiny", f"--sdmem-cache-dir={model_cache}",
            f"--sdmem-budgets={budgets}")
    first = pytester.runpytest(*args, "--sdmem-json=estimate.json")
    # No overhead known: the reserved budget cannot be checked, and says how to fix that.
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines(["*max_vram 1.00 GB (reserved) could not be checked*needs the "
                                "calibrated overhead*--sdmem-estimate-for*sdmem calibrate*"])

    # A GPU run of the same tests, 100 MB above each estimate's reserved memory (written by
    # hand: there is no GPU here), calibrates the card's overhead into the budgets file.
    estimates = RunResults.read(pytester.path / "estimate.json")
    for record in estimates.results:
        record.estimated, record.device, record.device_name = False, "cuda:0", card
        record.memory = {"peak_allocated_bytes": record.estimate["estimated_allocated_bytes"],
                         "peak_reserved_bytes":
                             record.estimate["estimated_reserved_bytes"] + 100_000_000}
    estimates.write(pytester.path / "gpu.json")
    assert main(["calibrate", "gpu.json", "estimate.json", f"--append={budgets}"]) == 0
    simulated = {r.nodeid.split("::")[1]: r.estimate["estimated_reserved_bytes"]
                 for r in RunResults.read(pytester.path / "estimate.json").results}

    # Between the simulated reserved memory and the same plus the overhead: only the overhead
    # makes it fail.
    pytester.makepyfile(test_file.format(limit=simulated["test_reserved"] + 50_000_000))
    second = pytester.runpytest(*args, f"--sdmem-estimate-for={card}", "--sdmem-json=r.json")
    second.assert_outcomes(passed=1, failed=1)
    second.stdout.fnmatch_lines([f"sdmem: estimates stand for {card} (sm80,*not in the card "
                                 "table: kernels chosen as on NVIDIA A100-SXM4-80GB"])
    overhead = 96 * 2**20  # 100 MB rounded up to the MiB (100.66 MB)
    second.stdout.fnmatch_lines([
        "*test_reserved*(incl. +100.66 MB overhead)*FAIL max_vram (estimated)",
        "VRAM (estimated) *test_reserved*",
    ])
    second.stdout.fnmatch_lines([
        f"peak VRAM * (reserved, cuda (estimated) * + overhead of {card}) exceeded max_vram * "
        f"estimated * + overhead 100.66 MB of {card!r}, calibrated: sdmem calibrate, 2 tests*"])
    records = {r["nodeid"].split("::")[1]: r
               for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    reserved, allocated = records["test_reserved"], records["test_allocated"]
    assert reserved["memory"]["peak_reserved_bytes"] == simulated["test_reserved"] + overhead
    assert reserved["estimate"]["overhead"]["reserved_bytes"] == overhead
    # Never folded into the allocated figure.
    assert (allocated["memory"]["peak_allocated_bytes"]
            == allocated["estimate"]["estimated_allocated_bytes"])

    unknown = pytester.runpytest(*args, "--sdmem-estimate-for=NVIDIA Other")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines([f"*'NVIDIA Other'*neither budgets nor an overhead*'{card}'*"])

    # A GPU with budgets but no overhead: the reserved budget says which table is missing.
    with budgets.open("a") as fh:
        fh.write('\n["NVIDIA Budgets Only"]\nunused = "2 GB"\n')
    no_overhead = pytester.runpytest(*args, "--sdmem-estimate-for=NVIDIA Budgets Only")
    no_overhead.assert_outcomes(passed=1, failed=1)
    no_overhead.stdout.fnmatch_lines(["*could not be checked*the budgets file has no "
                                      "[[]overhead.'NVIDIA Budgets Only'[]] table*"])

    # The ini key is a default for estimate runs: a measured run ignores it.
    pytester.makeini(f"[pytest]\nsdmem_estimate_for = {card}\n")
    measured = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "-k", "allocated")
    measured.assert_outcomes(passed=1, deselected=1)
