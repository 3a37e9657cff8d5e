"""Memory snapshots (memory/snapshot.py and the counter's recording): real CPU allocations, and
the CUDA replay on a hand-written dict shaped like ``torch.cuda.memory._snapshot()``."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pytest_sdmem.measuring.memory import MemoryTracker, TrackerError, get_backend
from pytest_sdmem.measuring.memory.frames import MEMORY_VIZ_URL, FrameFilter
from pytest_sdmem.measuring.memory.recording import StorageRef
from pytest_sdmem.measuring.memory.snapshot import (
    CudaSnapshotRecorder,
    SnapshotRecorder,
    parse_cuda_snapshot,
    snapshot_file_name,
)
from pytest_sdmem.measuring.memory.storage import StorageCounter

MB = 1_000_000
SOURCE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    """The line of this file that carries ``marker`` (frames are checked against it)."""
    return next(i for i, text in enumerate(SOURCE, 1) if text.endswith(f"# {marker}"))


def make_big() -> torch.Tensor:
    return torch.empty(16 * MB)  # BIG: 64 MB of float32


def make_small() -> list[torch.Tensor]:
    return [torch.ones(1000) for _ in range(3)] + [torch.rand(100_000) * 2]


def workload() -> None:
    """Early 40 MB freed before the peak, the peak (64 MB + small ones), a late 8 MB after it."""
    early = torch.zeros(10 * MB)
    del early
    small = make_small()
    big = make_big()
    del big  # freed after the peak: still listed as live at it
    late = torch.empty(8 * MB, dtype=torch.uint8)
    del late, small


@pytest.fixture
def recorder() -> Iterator[SnapshotRecorder]:
    recorder = SnapshotRecorder.for_device("cpu")
    yield recorder
    if recorder.recording:  # a failed test must not leave the shared counter recording
        recorder.stop(False, "", Path())


def test_the_largest_live_allocation_at_the_peak_comes_first_with_its_frames(
    recorder: SnapshotRecorder, tmp_path: Path
) -> None:
    recorder.start()
    workload()
    report = recorder.stop(True, "tests/unit/test_snapshot.py::test_x", tmp_path)

    assert report is not None and report.path is None  # no file on the CPU
    first = report.allocations[0]
    assert (first.nbytes, first.dtype, first.shape) == (64 * MB, "float32", (16 * MB,))
    assert first.frames[0] == (__file__, line_of("BIG: 64 MB of float32"), "make_big")
    assert first.frames[1].name == "workload"
    # torch's, pytest_sdmem's and the harness's own frames are left out
    assert not any(
        part in f.filename for f in first.frames for part in ("torch", "_pytest", "pluggy")
    )
    title, text = report.as_section()
    assert title == "sdmem: memory snapshot"
    lines = text.splitlines()
    assert lines[0].startswith("largest live allocations at the peak on cpu (")
    assert lines[1].strip() == "64.00 MB float32 [16000000]"
    here = os.path.relpath(__file__)
    assert lines[2].strip() == f"{here}:{line_of('BIG: 64 MB of float32')} in make_big"
    assert report.to_dict()["allocations"][0]["frames"][0]["name"] == "make_big"


def test_only_what_was_live_at_the_peak_is_listed_and_older_storages_are_summed(
    recorder: SnapshotRecorder, tmp_path: Path
) -> None:
    weights = torch.empty(5 * MB)  # alive before recording: no frames
    recorder.start()
    workload()
    report = recorder.stop(True, "t", tmp_path)
    assert report is not None

    sizes = sorted(a.nbytes for a in report.allocations)
    # the rand under `* 2` is freed at once; the early 40 MB and the late 8 MB are not listed
    assert sizes == [4000, 4000, 4000, 400_000, 64 * MB]
    assert report.unlisted_count == 0
    assert report.untraced_bytes >= 20 * MB
    assert report.peak_bytes == report.untraced_bytes + sum(sizes)
    assert "alive before recording started (no frames)" in report.as_section()[1]
    del weights


def test_the_recording_peak_is_the_trackers_peak_and_outlives_its_block(
    recorder: SnapshotRecorder, tmp_path: Path
) -> None:
    backend = get_backend("cpu")
    tracker = MemoryTracker(backend)
    tracker.start()  # the plugin's order: the tracker settles, then recording starts
    recorder.start()
    workload()
    tracker.stop()  # the test call ends before its report (and the recorder's stop) is made
    assert backend.counter.recording
    report = recorder.stop(True, "t", tmp_path)
    assert report is not None
    assert report.peak_bytes == tracker.peak_allocated
    assert report.allocations[0].nbytes == 64 * MB
    assert not backend.counter.recording and not backend.counter.active


def test_a_passing_test_gets_no_report_and_recording_ends(
    recorder: SnapshotRecorder, tmp_path: Path
) -> None:
    recorder.start()
    workload()
    assert recorder.stop(False, "t", tmp_path) is None
    assert not get_backend("cpu").counter.recording
    assert not list(tmp_path.iterdir())


def test_without_recording_no_frames_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("frames taken while not recording")

    monkeypatch.setattr(FrameFilter, "stack", refuse)
    counter = StorageCounter("cpu")
    counter.activate()
    try:
        keep = [torch.ones(1000) * 2 for _ in range(10)]
        x = torch.empty(1000)
        x.resize_(4000)
        assert all(type(ref) is StorageRef for ref in counter._refs.values())
        assert not counter.recording
    finally:
        counter.deactivate()
    with pytest.raises(TrackerError, match="not recording"):
        counter.stop_recording()
    del keep, x


def test_a_storage_grown_in_place_is_reported_at_its_size_at_the_peak(tmp_path: Path) -> None:
    counter = StorageCounter("cpu")
    counter.start_recording()
    x = torch.empty(MB, dtype=torch.uint8)
    x.resize_(3 * MB)  # RESIZE
    del x
    report = counter.stop_recording()
    assert [a.nbytes for a in report.allocations] == [3 * MB]
    assert report.allocations[0].frames[0].line == line_of("RESIZE")
    assert not counter.active


@pytest.mark.parametrize(
    ("nodeid", "readable"),
    [
        ("tests/unit/test_x.py::test_a[fp16-1/2]", "tests_unit_test_x.py_test_a_fp16-1_2"),
        ("tests/t.py::T::test b[é]", "tests_t.py_T_test_b"),
        ("::", "test"),
    ],
)
def test_snapshot_file_names_are_safe_and_unique_per_node_id(nodeid: str, readable: str) -> None:
    name = snapshot_file_name(nodeid)
    stem, digest = name.removesuffix(".pickle").rsplit("-", 1)
    assert stem == readable and len(digest) == 8
    assert snapshot_file_name(nodeid) == name  # the same test always gets the same file


def test_node_ids_that_sanitise_alike_get_different_names() -> None:
    assert snapshot_file_name("t.py::t[1/2]") != snapshot_file_name("t.py::t[1_2]")


def test_long_node_ids_give_bounded_distinct_names() -> None:
    base = "tests/test_x.py::test_y[" + "a" * 500
    one, two = snapshot_file_name(base + "1]"), snapshot_file_name(base + "2]")
    assert one != two and len(one) < 140 and set(one) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
    )


TORCH_FRAME = {
    "filename": os.path.join(os.path.dirname(torch.__file__), "nn", "modules", "module.py"),
    "line": 1775, "name": "_call_impl",
}


def frames(*names: str) -> list[dict[str, object]]:
    return [TORCH_FRAME] + [
        {"filename": "/src/app/model.py", "line": 10 * i + 1, "name": name}
        for i, name in enumerate(names)
    ]


def cuda_snapshot() -> dict[str, object]:
    """Device 0: 1000 B from before recording stay, 500 B from before are freed; 3000 B early,
    freed before the peak; the peak is 4000 B + 100 B; 4000 B freed, then 200 B late; an OOM."""
    trace = [
        {"action": "free_requested", "addr": 0x2000, "size": 500, "frames": []},
        {"action": "free_completed", "addr": 0x2000, "size": 500, "frames": []},
        {"action": "free_completed", "addr": 0x9000, "size": 50, "frames": []},  # asked before
        {"action": "segment_alloc", "addr": 0x3000, "size": 2 << 20, "frames": []},
        {"action": "alloc", "addr": 0x3000, "size": 3000, "frames": frames("early")},
        {"action": "free_requested", "addr": 0x3000, "size": 3000, "frames": []},
        {"action": "free_completed", "addr": 0x3000, "size": 3000, "frames": []},
        {"action": "alloc", "addr": 0x3000, "size": 4000, "frames": frames("make_big", "test")},
        {"action": "alloc", "addr": 0x4000, "size": 100, "frames": frames("make_small")},
        {"action": "free_requested", "addr": 0x3000, "size": 4000, "frames": []},
        {"action": "alloc", "addr": 0x5000, "size": 200, "frames": frames("late")},
        {"action": "free_completed", "addr": 0x3000, "size": 4000, "frames": []},
        {"action": "oom", "size": 80_000_000_000, "device_free": 1_000_000, "frames": []},
    ]

    def block(addr: int, size: int, state: str) -> dict[str, object]:
        return {"address": addr, "size": size, "requested_size": size, "state": state,
                "frames": []}

    return {
        "segments": [
            {"device": 0, "address": 0x1000, "total_size": 2 << 20, "blocks": [
                block(0x1000, 1000, "active_allocated"),
                block(0x3000, 4000, "inactive"),
                block(0x4000, 100, "active_allocated"),
                block(0x5000, 200, "active_allocated"),
            ]},
            {"device": 1, "address": 0x1000, "total_size": 2 << 20, "blocks": [
                block(0x1000, 7777, "active_allocated"),
            ]},
        ],
        "device_traces": [trace, [{"action": "alloc", "addr": 0x1000, "size": 7777}]],
    }


def test_cuda_snapshot_replay_finds_the_live_allocations_at_the_peak() -> None:
    report = parse_cuda_snapshot(cuda_snapshot(), 0, max_entries=100)
    assert report.device == "cuda:0"
    assert report.peak_bytes == 1000 + 4000 + 100
    assert [a.nbytes for a in report.allocations] == [4000, 100]
    big = report.allocations[0]
    assert [(f.filename, f.line, f.name) for f in big.frames] == [
        ("/src/app/model.py", 1, "make_big"), ("/src/app/model.py", 11, "test"),
    ]
    assert (report.untraced_bytes, report.untraced_count) == (1000, 1)
    assert len(report.notes) == 1 and "ran out of memory 1 time(s)" in report.notes[0]
    assert "80.00 GB with 1.00 MB free" in report.notes[0]

    report.path = Path("/snapshots/t.pickle")
    text = report.as_section()[1]
    assert "4.00 KB\n      /src/app/model.py:1 in make_big" in text
    assert text.endswith(f"snapshot written to /snapshots/t.pickle: open it at {MEMORY_VIZ_URL}")
    assert report.to_dict()["path"] == "/snapshots/t.pickle"


def test_cuda_snapshot_replay_limits_and_notes_a_full_history() -> None:
    report = parse_cuda_snapshot(cuda_snapshot(), 0, top=1, max_frames=1, max_entries=13)
    assert [a.nbytes for a in report.allocations] == [4000]
    assert [f.name for f in report.allocations[0].frames] == ["make_big"]
    assert (report.unlisted_count, report.unlisted_bytes) == (1, 100)
    assert any("only the last 13 allocator events" in note for note in report.notes)
    other = parse_cuda_snapshot(cuda_snapshot(), 1)
    assert other.peak_bytes == 7777 and other.untraced_bytes == 0


class FakeCudaMemory:
    """Stands in for torch.cuda.memory's recording API, with the signature torch 2.11+ has."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def _record_memory_history(
        self, enabled: str | None = "all", context: str | None = "all", stacks: str = "all",
        max_entries: int = 2**63 - 1, device: object = None, clear_history: bool = False,
    ) -> None:
        self.calls.append({"enabled": enabled, "context": context, "stacks": stacks,
                           "max_entries": max_entries, "clear_history": clear_history})

    def _snapshot(self) -> dict[str, object]:
        return cuda_snapshot()


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudaMemory:
    fake = FakeCudaMemory()
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", fake._record_memory_history)
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", fake._snapshot)
    return fake


def test_cuda_recorder_records_python_stacks_and_dumps_only_on_failure(
    fake_cuda: FakeCudaMemory, tmp_path: Path
) -> None:
    recorder = CudaSnapshotRecorder("cuda:0", max_entries=500)
    recorder.start()
    assert fake_cuda.calls == [{"enabled": "all", "context": "alloc", "stacks": "python",
                                "max_entries": 500, "clear_history": True}]
    assert recorder.stop(False, "tests/t.py::t", tmp_path) is None
    assert fake_cuda.calls[-1]["enabled"] is None  # recording is off again
    assert not list(tmp_path.iterdir())

    recorder.start()
    nodeid = "tests/t.py::test_budget[sd15/fp16]"
    report = recorder.stop(True, nodeid, tmp_path / "snapshots")
    assert fake_cuda.calls[-1]["enabled"] is None
    assert report is not None
    assert report.path == tmp_path / "snapshots" / snapshot_file_name(nodeid)
    assert pickle.loads(report.path.read_bytes()) == cuda_snapshot()
    assert [p.name for p in report.path.parent.iterdir()] == [report.path.name]  # no temp file
    assert report.allocations[0].frames[0].name == "make_big"
    assert f"{report.path}: open it at {MEMORY_VIZ_URL}" in report.as_section()[1]


def test_cuda_recorder_keeps_the_section_when_the_file_cannot_be_written(
    fake_cuda: FakeCudaMemory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    recorder = CudaSnapshotRecorder("cuda:0")
    recorder.start()
    report = recorder.stop(True, "t", blocker)
    assert report is not None and report.path is None
    assert any(note.startswith("could not write the snapshot to") for note in report.notes)
    assert fake_cuda.calls[-1]["enabled"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_recorder_without_cuda_says_why() -> None:
    with pytest.raises(TrackerError, match="cannot measure cuda:0"):
        SnapshotRecorder.for_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_recorder_dumps_a_snapshot_that_names_the_allocating_frame(tmp_path: Path) -> None:
    recorder = SnapshotRecorder.for_device("cuda")
    recorder.start()
    big = torch.empty(16 * MB, device="cuda")  # CUDA-BIG
    del big
    report = recorder.stop(True, "tests/unit/test_snapshot.py::test_cuda[a/b]", tmp_path)
    assert report is not None and report.path is not None
    assert report.path.parent == tmp_path and report.path.name.endswith(".pickle")
    with report.path.open("rb") as fh:
        assert "segments" in pickle.load(fh)
    first = report.allocations[0]
    assert first.nbytes >= 64 * MB
    assert first.frames[0] == (__file__, line_of("CUDA-BIG"), first.frames[0].name)
    assert MEMORY_VIZ_URL in report.as_section()[1]
