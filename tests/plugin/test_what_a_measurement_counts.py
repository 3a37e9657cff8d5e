"""What a measurement counts, end to end on the CPU (docs/reliability.md, "What a measurement
counts"): a failed test's frames, tensors made in other threads or without a dispatched op, a
block left open, markers given twice, xfail tests over budget.

Each inner test allocates real tensors of a few MB; the outer test checks pytest's verdict.
"""

from __future__ import annotations

import threading

import pytest
import torch

from pytest_sdmem.measuring.memory import MemoryTracker, TrackerError, get_backend

MB = 2**20


def test_a_failed_test_leaves_nothing_in_the_next_tests_peak(pytester: pytest.Pytester) -> None:
    """pytest keeps the last failure's traceback (for post-mortem debugging) until the next
    call starts: its frames must not keep the failed test's 12 MB in the next test's peak,
    nor be blamed on it by the leak check."""
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("100MB")
        def test_fails():
            kept = torch.ones({12 * MB}, dtype=torch.uint8)
            assert kept.sum() == 0

        def test_fails_unmeasured():
            kept = torch.ones({12 * MB}, dtype=torch.uint8)
            raise ValueError("with a chained cause") from KeyError(kept.shape)

        @pytest.mark.max_vram("6MB")
        def test_small():
            y = torch.ones({4 * MB}, dtype=torch.uint8)
            assert y.sum() > 0
        """
    )
    result = pytester.runpytest("-W", "error::pytest_sdmem.SdmemLeakWarning")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.no_fnmatch_line("*left * of cpu memory*")


def test_tensors_of_other_threads_and_outside_the_dispatcher_count(
    pytester: pytest.Pytester,
) -> None:
    """Each test's 8 MB is made and freed in another thread, or made without a dispatched op:
    a 4 MB budget fails on each, with the 8 MB in the figure."""
    pytester.makepyfile(
        f"""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import pytest, torch

        def allocate():
            x = torch.ones({8 * MB}, dtype=torch.uint8)
            return int(x.sum())

        @pytest.fixture(scope="module")
        def pool():
            with ThreadPoolExecutor(1) as executor:
                executor.submit(int).result()  # its thread starts here, before any measuring
                yield executor

        @pytest.mark.max_vram("4MB")
        def test_thread():
            worker = threading.Thread(target=allocate)
            worker.start()
            worker.join()

        @pytest.mark.max_vram("4MB")
        def test_executor_of_a_fixture(pool):
            assert pool.submit(allocate).result() == {8 * MB}

        @pytest.mark.max_vram("4MB")
        def test_frombuffer_used_by_an_op(cuda_mem_tracker):
            with cuda_mem_tracker:
                buffer = torch.frombuffer(bytearray({8 * MB}), dtype=torch.uint8)
                buffer.sum()
            del buffer

        @pytest.mark.max_vram("4MB")
        def test_untyped_storage_used_by_an_op():
            storage = torch.UntypedStorage({8 * MB})
            torch.empty(0, dtype=torch.uint8).set_(storage)
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [f"VRAM *::{name} - peak memory 8.39 MB*exceeded max_vram 4.00 MB*" for name in (
            "test_thread", "test_executor_of_a_fixture",
            "test_frombuffer_used_by_an_op", "test_untyped_storage_used_by_an_op")])


def test_a_thread_the_counter_cannot_see_is_an_error() -> None:
    """A thread that was not entered at its start (here: started while another library had
    replaced threading's profile hook) runs no counting mode: measuring then is refused,
    naming the thread, rather than giving a figure that misses its tensors."""
    stop = threading.Event()
    hook = threading.getprofile()
    threading.setprofile(None)
    try:
        worker = threading.Thread(target=stop.wait, name="not-entered")
        worker.start()
    finally:
        threading.setprofile(hook)
    tracker = MemoryTracker(get_backend("cpu"))
    try:
        with pytest.raises(TrackerError, match=r"cannot see into thread\(s\) 'not-entered'"):
            tracker.start()
        assert not tracker.measuring
    finally:
        stop.set()
        worker.join()
    with tracker:  # the thread has ended: nothing is blind any more
        x = torch.ones(MB, dtype=torch.uint8)
        del x
    assert tracker.peak_delta == MB


def test_an_open_block_closes_with_the_call_and_counts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest, torch

        @pytest.mark.max_vram("4KB")
        def test_open_block(cuda_mem_tracker):
            with cuda_mem_tracker:
                torch.ones(16, dtype=torch.uint8)
            cuda_mem_tracker.start()
            big = torch.ones({8 * MB}, dtype=torch.uint8)
            assert big.sum() > 0
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["VRAM *test_open_block - peak memory 8.39 MB*exceeded max_vram*"])


def test_markers_given_twice_must_agree(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.max_vram("8MB")
        class TestClass:
            @pytest.mark.max_vram("4MB")
            def test_class_and_function(self):
                torch.ones(16)

        @pytest.mark.max_vram("4MB")
        @pytest.mark.max_vram("4 MB")
        def test_same_budget_twice():
            torch.ones(16)

        @pytest.mark.min_speedup(2.0)
        @pytest.mark.min_speedup(1.5)
        def test_two_speedups(sd_pipe):
            pass

        @pytest.mark.sd_technique("fp16")
        @pytest.mark.sd_technique("none")
        def test_two_techniques(sd_pipe):
            pass

        @pytest.mark.sd_technique("fp16")
        @pytest.mark.parametrize("sd_pipe", ["none"], indirect=True)
        def test_marked_and_parametrized(sd_pipe):
            pass

        @pytest.mark.sd_technique("bogus")
        def test_bogus_technique_without_sd_pipe():
            pass

        @pytest.mark.sd_technique("fp16")
        def test_technique_without_sd_pipe():
            pass
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(passed=1, errors=6)
    result.stdout.fnmatch_lines_random([
        "*test_class_and_function*max_vram is given twice with different values on this test: "
        "max_vram('4MB') and max_vram('8MB'); keep one",
        "*test_two_speedups*min_speedup(1.5) and min_speedup(2.0)*",
        "*test_two_techniques*sd_technique('none') and sd_technique('fp16')*",
        "*test_marked_and_parametrized*sd_pipe is parametrized with 'none' but "
        "@pytest.mark.sd_technique says 'fp16'*",
        "*test_bogus_technique_without_sd_pipe*'bogus'*",
        "*test_technique_without_sd_pipe*sd_technique('fp16') selects the technique of the "
        "sd_pipe fixture, and this test does not use sd_pipe",
    ])


def test_an_xfail_test_over_budget_is_its_expected_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest, torch

        def allocate():
            x = torch.ones({2 * MB}, dtype=torch.uint8)
            assert x.sum() > 0

        @pytest.mark.xfail(reason="too big for now")
        @pytest.mark.max_vram("1MB")
        def test_over():
            allocate()

        @pytest.mark.xfail(strict=True)
        @pytest.mark.max_vram("1MB")
        def test_over_strict():
            allocate()

        @pytest.mark.xfail(strict=True)
        @pytest.mark.max_vram("8MB")
        def test_within_strict():
            allocate()

        @pytest.mark.xfail(raises=KeyError)
        @pytest.mark.max_vram("1MB")
        def test_over_expecting_another_error():
            allocate()
        """
    )
    result = pytester.runpytest("-rA", "-vv")
    result.assert_outcomes(xfailed=2, failed=2)
    result.stdout.fnmatch_lines_random([
        "XFAIL *::test_over - too big for now: peak memory 2.10 MB*exceeded max_vram 1.00 MB*",
        "XFAIL *::test_over_strict - peak memory 2.10 MB*exceeded max_vram 1.00 MB*",
        "FAILED *::test_within_strict*XPASS(strict)*",
        "VRAM *::test_over_expecting_another_error - peak memory 2.10 MB*",
    ])
