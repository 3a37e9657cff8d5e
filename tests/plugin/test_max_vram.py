"""``max_vram`` end to end on the CPU: real allocations, exact accounting, pytest's view of it.

These run pytest inside pytest (pytester, in process, so torch is imported once); each inner
test allocates real tensors, and the outer test checks what the plugin made of them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

MB64 = 64 * 2**20


def test_over_budget_fails_with_the_figures_and_its_own_status(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.max_vram("32MB")
        def test_over():
            x = torch.ones(64 * 2**20, dtype=torch.uint8)
            assert x.sum() > 0

        @pytest.mark.max_vram("128MB")
        def test_under():
            x = torch.ones(64 * 2**20, dtype=torch.uint8)
            assert x.sum() > 0
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=1, failed=1)
    # The short summary uses the plugin's own status word, so memory failures stand apart.
    result.stdout.re_match_lines([
        r".*test_over VRAM.*",
        r"VRAM .*::test_over - peak memory 67\.\d\d MB \(allocated, cpu.*\) exceeded max_vram "
        r"32\.00 MB by 3\d\.\d\d MB \(\+10\d\.\d%\)",
    ])
    result.stdout.fnmatch_lines(["*sdmem: memory*", "*peak allocated 67.11 MB*"])


def test_the_budget_counts_the_call_phase_only(pytester: pytest.Pytester) -> None:
    """A transient allocation in fixture setup is not counted; a tensor the fixture keeps is."""
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.fixture
        def transient():
            big = torch.ones({4 * MB64}, dtype=torch.uint8)
            del big
            return 1

        @pytest.fixture
        def kept():
            return torch.ones({MB64}, dtype=torch.uint8)

        @pytest.mark.max_vram("100MB")
        def test_transient_setup_not_counted(transient):
            torch.ones({MB64}, dtype=torch.uint8)

        @pytest.mark.max_vram("100MB")
        def test_kept_tensor_counts(kept):
            torch.ones({MB64}, dtype=torch.uint8)
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["VRAM *test_kept_tensor_counts - peak memory 134.* exceeded*"])


def test_views_are_not_double_counted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("{MB64 + 2**20}B")
        def test_views():
            x = torch.ones({MB64}, dtype=torch.uint8)
            views = [x[1:], x.view(torch.int32), x.reshape(2, -1), x.t() if x.dim() == 2 else x]
            assert len(views) == 4
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_cuda_mem_tracker_blocks_set_what_the_budget_sees(pytester: pytest.Pytester) -> None:
    """With tracker blocks, the budget applies to the highest block, not the whole call."""
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("110MB")  # the blocks peak at 96 MiB; the call at 128 MiB
        def test_blocks(cuda_mem_tracker):
            outside = torch.ones({2 * MB64}, dtype=torch.uint8)  # not inside a block
            del outside
            with cuda_mem_tracker as m:
                a = torch.ones({MB64 // 2}, dtype=torch.uint8)
            first = m.peak_delta
            with cuda_mem_tracker as m:
                b = torch.ones({MB64}, dtype=torch.uint8)
            assert first == {MB64 // 2} and m.peak_delta == {MB64}
            assert len(cuda_mem_tracker.reports) == 2
            assert "MB" in str(m)

        @pytest.mark.max_vram("50MB")
        def test_highest_block_fails(cuda_mem_tracker):
            with cuda_mem_tracker:
                small = torch.ones(1024, dtype=torch.uint8)
            with cuda_mem_tracker:
                big = torch.ones({MB64}, dtype=torch.uint8)

        def test_nesting_is_an_error(cuda_mem_tracker):
            with cuda_mem_tracker:
                with pytest.raises(Exception, match="nest"):
                    with cuda_mem_tracker:
                        pass
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["VRAM *test_highest_block_fails - peak memory 67.* exceeded*"])


def test_malformed_markers_are_errors_of_their_own_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.max_vram("3 bananas")
        def test_bananas():
            pass

        @pytest.mark.max_vram("3GBxyz")
        def test_suffix():
            pass

        @pytest.mark.max_vram("1GB", metric="peak")
        def test_metric():
            pass

        @pytest.mark.max_vram()
        def test_no_limit():
            pass

        @pytest.mark.max_vram("1GB")
        def test_fine():
            pass
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines_random([
        "*test_bananas*limit '3 bananas' is not a size; accepted: *GiB*",
        "*test_suffix*limit '3GBxyz' is not a size*",
        "*test_metric*metric 'peak' is unknown; accepted: 'allocated'*",
        "*test_no_limit*takes exactly one limit*",
    ])


def test_gpu_without_cuda_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    result.stderr.fnmatch_lines([
        "*--gpu was given but no CUDA device is visible*torch.cuda.is_available() = False*"
        "CUDA_VISIBLE_DEVICES=*",
    ])
    result.stdout.no_fnmatch_line("*collected*")


def test_gpu_marker_skips_without_gpu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_on_gpu():
            raise AssertionError("must not run on the CPU tier")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs --gpu*"])


def test_results_json_junit_and_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("1GB")
        def test_measured():
            x = torch.ones({MB64}, dtype=torch.uint8)

        @pytest.mark.max_vram("1MB", metric="reserved")
        def test_failing():
            x = torch.ones({MB64}, dtype=torch.uint8)

        def test_not_measured():
            pass
        """
    )
    result = pytester.runpytest("--sdmem-json=out/results.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*sdmem: memory and speed*",
        "test*technique*device*peak allocated*budget*verdict*",
        "*test_measured*cpu*67.* MB*1.00 GB (allocated)*passed*",
        "*test_failing*cpu*1.00 MB (reserved)*FAIL max_vram*",
    ])
    data = json.loads((pytester.path / "out" / "results.json").read_text())
    assert data["schema_version"] == 1
    env = data["environment"]
    for key in ("device_name", "python", "torch", "diffusers", "transformers", "accelerate",
                "xformers", "allocator_config", "total_memory_bytes"):
        assert key in env
    by_id = {r["nodeid"]: r for r in data["results"]}
    assert set(by_id) == {"test_results_json_junit_and_summary.py::test_measured",
                          "test_results_json_junit_and_summary.py::test_failing"}
    measured = by_id["test_results_json_junit_and_summary.py::test_measured"]
    assert measured["outcome"] == "passed" and measured["device"] == "cpu"
    assert measured["budget"] == {"max_vram_bytes": 10**9, "metric": "allocated", "key": None}
    mem = measured["memory"]
    assert mem["peak_allocated_bytes"] - mem["start_allocated_bytes"] >= MB64
    for key in ("peak_reserved_bytes", "host_peak_rss_bytes"):
        assert isinstance(mem[key], int)
    failing = by_id["test_results_json_junit_and_summary.py::test_failing"]
    assert failing["outcome"] == "failed"
    assert failing["verdicts"][0]["kind"] == "max_vram" and not failing["verdicts"][0]["passed"]

    props = {
        (case.get("name"), p.get("name")): p.get("value")
        for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
        for p in case.iter("property")
    }
    assert int(props[("test_measured", "sdmem_peak_allocated_bytes")]) >= MB64
    assert props[("test_measured", "sdmem_max_vram_bytes")] == str(10**9)
    assert props[("test_failing", "sdmem_metric")] == "reserved"
    assert not any(name == "test_not_measured" for name, _ in props)


def test_out_of_memory_is_a_budget_failure_and_the_next_test_measures(
    pytester: pytest.Pytester,
) -> None:
    """A real allocator failure (the CPU allocator refuses 2**60 bytes), not a raised fake."""
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("1GB")
        def test_oom():
            keep = torch.ones({MB64}, dtype=torch.uint8)
            torch.empty(2**60, dtype=torch.uint8)

        @pytest.mark.max_vram("100MB")
        def test_after(cuda_mem_tracker):
            with cuda_mem_tracker as m:
                x = torch.ones({MB64}, dtype=torch.uint8)
            assert m.peak_delta == {MB64}
            assert m.start_allocated < {MB64}, "the failed test's memory was not released"
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "VRAM *test_oom - out of memory under max_vram 1.00 GB (allocated) on cpu*: "
        "the allocator ran out*",
    ])


def test_leak_warning_and_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest, torch

        KEEP = []

        @pytest.mark.max_vram("1GB")
        def test_leaks():
            KEEP.append(torch.ones({MB64}, dtype=torch.uint8))

        @pytest.mark.max_vram("1GB")
        def test_clean():
            x = torch.ones({MB64}, dtype=torch.uint8)
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*SdmemLeakWarning: *test_leaks left 67.* MB of cpu memory*"])
    strict = pytester.runpytest("--sdmem-strict-leaks")
    strict.assert_outcomes(passed=2, errors=1)
    strict.stdout.fnmatch_lines(["*test_leaks left 67.* MB*(--sdmem-strict-leaks)*"])


def test_options_are_settable_in_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        sdmem_json = from_ini.json
        sdmem_leak_threshold = 1GB
        """
    )
    pytester.makepyfile(
        """
        import pytest, torch
        KEEP = []

        @pytest.mark.max_vram("1GB")
        def test_leaks_under_threshold():
            KEEP.append(torch.ones(2**20, dtype=torch.uint8))
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "from_ini.json").exists()


def test_the_process_metric_on_the_cpu_fails_saying_why(pytester: pytest.Pytester) -> None:
    """No driver-level figure exists for the CPU: a budget on it must not silently pass."""
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.max_vram("1GB", metric="process")
        def test_process():
            torch.ones(2**20, dtype=torch.uint8)
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "VRAM *test_process - max_vram 1.00 GB (process) could not be checked on cpu*: the "
        "'process' metric is not available here: it needs a CUDA device and nvidia-ml-py*",
    ])
