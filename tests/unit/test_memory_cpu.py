"""Exact live-storage accounting (memory/storage.py), its backend (memory/cpu.py) and
get_backend, with real allocations."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.testing._internal.two_tensor import TwoTensor

from pytest_sdmem.measuring.memory import MemoryTracker, TrackerError, get_backend, normalize_device
from pytest_sdmem.measuring.memory.cpu import CpuBackend
from pytest_sdmem.measuring.memory.storage import StorageCounter

MIB = 2**20


@pytest.fixture
def counter() -> Iterator[StorageCounter]:
    """A counter of its own, so that a failing test cannot leave the shared one active."""
    counter = StorageCounter("cpu")
    counter.activate()
    yield counter
    while counter.active:
        counter.deactivate()


def test_tensor_created_from_python_data_and_numpy_counts(counter: StorageCounter) -> None:
    start = counter.current
    from_list = torch.tensor([1.0] * 1000)  # float32
    from_numpy = torch.from_numpy(np.ones(MIB, dtype=np.uint8))  # shares numpy's buffer
    assert counter.current == start + 4000 + MIB
    del from_list, from_numpy
    assert counter.current == start


def test_storage_made_outside_the_dispatcher_counts_when_used_or_rescanned(
    counter: StorageCounter,
) -> None:
    start = counter.current
    used = torch.frombuffer(bytearray(MIB), dtype=torch.uint8)  # no dispatched op
    unused = torch.frombuffer(bytearray(2 * MIB), dtype=torch.uint8)
    assert counter.current == start
    _ = used + 0  # seen as an input; the result is a new MiB
    assert counter.current == start + 2 * MIB
    counter.rescan()
    assert counter.current == start + 4 * MIB
    del used, unused, _
    assert counter.current == start


def test_in_place_resize_and_out_argument_update_the_count(counter: StorageCounter) -> None:
    start = counter.current
    x = torch.empty(MIB, dtype=torch.uint8)
    x.resize_(4 * MIB)
    assert counter.current == start + 4 * MIB
    assert counter.peak == start + 4 * MIB
    out = torch.empty(0)
    torch.add(torch.ones(MIB // 4), 1, out=out)  # out grows to 1 MiB; the ones are freed
    assert counter.current == start + 5 * MIB
    del x, out
    assert counter.current == start


class _Events(StorageCounter):
    """A counter that logs its hooks, as the estimator's simulated device follows storages."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.events: list[tuple[str, int, int]] = []

    def on_count(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        self.events.append(("count", key, nbytes))

    def on_resize(self, key: int, nbytes: int, tensor: torch.Tensor | None) -> None:
        self.events.append(("resize", key, nbytes))

    def on_release(self, key: int, nbytes: int) -> None:
        self.events.append(("release", key, nbytes))


def test_a_subclass_hears_each_storage_counted_resized_and_released() -> None:
    counter = _Events()
    counter.activate()
    try:
        counter.events.clear()  # what the activation's scan found
        x = torch.empty(MIB, dtype=torch.uint8)
        key = x.untyped_storage()._cdata
        x.resize_(4 * MIB)
        del x
    finally:
        counter.deactivate()
    assert [e for e in counter.events if e[1] == key] == [
        ("count", key, MIB), ("resize", key, 4 * MIB), ("release", key, 4 * MIB)
    ]


def test_every_tensor_of_a_tuple_output_counts_and_views_in_it_do_not(
    counter: StorageCounter,
) -> None:
    x = torch.rand(MIB // 4)  # 1 MiB of float32
    start = counter.current
    values, indices = torch.sort(x)
    assert counter.current == start + MIB + 2 * MIB  # float32 values + int64 indices
    chunks = torch.chunk(values, 4)
    assert counter.current == start + 3 * MIB
    del values, indices, chunks


def test_meta_tensors_are_counted_by_the_meta_backend_only() -> None:
    meta, cpu = MemoryTracker(get_backend("meta")), MemoryTracker(get_backend("cpu"))
    with cpu, meta:
        x = torch.empty(1024, 1024, device="meta")
        y = x * 2  # an op on meta: a new meta storage
        del x, y
    assert meta.peak_delta == 8 * MIB
    assert meta.end_allocated == meta.start_allocated
    assert cpu.peak_delta == 0
    assert get_backend("meta").device_name.startswith("meta")


def test_outputs_are_returned_unchanged_and_subclasses_counted_by_their_inner_tensors(
    counter: StorageCounter,
) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.SiLU())
    x = torch.randn(2, 3, 16, 16)
    counter.deactivate()
    expected = net(x)
    counter.activate()
    got = net(x)
    assert type(got) is torch.Tensor and torch.equal(got, expected)
    start = counter.current
    pair = TwoTensor(torch.zeros(MIB // 4), torch.ones(MIB // 4))
    doubled = pair * 2
    assert isinstance(doubled, TwoTensor)
    # only the inner tensors hold memory; the wrappers' placeholder storages count zero
    assert counter.current == start + 4 * MIB


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_higher_order_operators_run_and_their_outputs_count(counter: StorageCounter) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.randn(1, 1, 128, 16)
    counter.deactivate()
    expected = flex_attention(q, q, q)
    counter.activate()
    start = counter.current
    got = flex_attention(q, q, q)  # a HigherOrderOperator: refused under modes by default
    assert torch.equal(got, expected)
    assert counter.current == start + got.nbytes


def test_a_storage_freed_in_another_thread_is_subtracted(counter: StorageCounter) -> None:
    start = counter.current
    box = [torch.empty(8 * MIB, dtype=torch.uint8)]
    assert counter.current == start + 8 * MIB
    worker = threading.Thread(target=box.clear)
    worker.start()
    worker.join()
    assert counter.current == start


def test_activation_counts_and_tracks_what_is_already_alive() -> None:
    x = torch.empty(5 * MIB, dtype=torch.uint8)
    view = x[::2]
    counter = StorageCounter("cpu")
    counter.activate()
    try:
        alive = counter.current
        assert alive >= 5 * MIB
        del x
        assert counter.current == alive
        del view
        assert counter.current == alive - 5 * MIB
    finally:
        counter.deactivate()


def test_activation_is_refcounted(counter: StorageCounter) -> None:
    counter.activate()
    counter.deactivate()
    assert counter.active
    x = torch.empty(MIB, dtype=torch.uint8)
    assert counter.peak >= counter.current >= MIB
    counter.deactivate()
    assert not counter.active
    assert counter.current == 0  # forgets everything: the next activation rescans
    with pytest.raises(TrackerError, match="deactivated while inactive"):
        counter.deactivate()
    del x


def test_inactive_backend_reports_a_fresh_snapshot() -> None:
    backend = CpuBackend("cpu")
    before = backend.allocated()
    x = torch.empty(3 * MIB, dtype=torch.uint8)
    view = x[::3]
    assert backend.allocated() == before + 3 * MIB
    del x, view
    assert backend.allocated() == before


def test_get_backend_normalises_and_caches() -> None:
    assert get_backend("cpu") is get_backend("cpu")
    assert get_backend("cpu").device == "cpu"
    assert get_backend("meta").device == "meta"
    assert normalize_device("cuda") == "cuda:0"
    assert normalize_device("cuda:3") == "cuda:3"


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:", "cuda:x", "cuda0", "", "cpu:0"])
def test_get_backend_rejects_unknown_devices_with_the_accepted_forms(device: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'cpu', 'meta', 'cuda' .* 'cuda:N'"):
        get_backend(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_backend_without_cuda_says_why() -> None:
    with pytest.raises(TrackerError, match=r"cannot measure cuda:0: torch.cuda.is_available"):
        get_backend("cuda")


def test_threads_are_entered_only_once_a_cpu_backend_exists() -> None:
    """A process that imports the plugin (and torch) but never counts on the CPU puts no
    dispatch mode in its threads; creating the CPU backend enters every thread started later.
    In a fresh interpreter: this one created its backends long ago."""
    import subprocess
    import sys
    import textwrap

    probe = textwrap.dedent("""
        import threading
        import torch
        from pytest_sdmem.measuring.memory import get_backend, threads

        def started_thread():
            seen = []
            t = threading.Thread(target=lambda: seen.append(threading.current_thread()))
            t.start()
            t.join()
            return seen[0] in threads.ENTERED

        before = started_thread()
        get_backend("cpu")
        print(before, started_thread())
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_a_progress_bar_before_the_first_cpu_measurement_does_not_block_it() -> None:
    """tqdm's monitor thread starts with the first progress bar (a pipeline run that measured
    nothing, say) and is never entered; it makes no tensors, so a later measurement proceeds.
    Any other thread started before the backend still refuses the measurement. In a fresh
    interpreter, where no CPU backend exists yet."""
    import subprocess
    import sys
    import textwrap

    probe = textwrap.dedent("""
        import threading, time
        import torch
        from tqdm import tqdm
        from pytest_sdmem.measuring.memory import MemoryTracker, get_backend
        from pytest_sdmem.measuring.memory.tracker import TrackerError

        for _ in tqdm(range(2), mininterval=0, disable=False):
            pass
        assert any(type(t).__name__ == "TMonitor" for t in threading.enumerate())
        stop = threading.Event()
        other = threading.Thread(target=stop.wait, name="early-worker")
        other.start()
        try:
            with MemoryTracker(get_backend("cpu")):
                pass
        except TrackerError as exc:
            print("early-worker" in str(exc) and "TMonitor" not in str(exc))
        stop.set()
        other.join()
        tracker = MemoryTracker(get_backend("cpu"))
        with tracker:
            x = torch.ones(2**20, dtype=torch.uint8)
        print(tracker.reports[-1].peak_allocated >= 2**20)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
