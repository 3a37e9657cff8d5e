"""The machine check before a GPU session, on recorded NVML answers (no GPU needed).

``RecordedNvml`` answers the NVML calls that ``memory.cuda.read_gpu`` makes from data recorded
as an NVML would give it; the code under test is the one a GPU session runs
(``check_machine``, ``read_gpu``), with the module passed in as it is on a GPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pytest_sdmem.gate.baseline import compare_runs
from pytest_sdmem.gate.comparable import environment_differences
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import MemorySection
from pytest_sdmem.gate.settings import SettingsError, Workers, build_settings
from pytest_sdmem.measuring.memory import get_backend
from pytest_sdmem.measuring.memory.cuda import check_machine, read_gpu, select_device
from pytest_sdmem.plugin.machine import (
    environment_header,
    machine_action,
    session_baseline,
    warms_up,
)


class NVMLError(Exception):
    """pynvml's base exception; NVML's "not supported" and "no permission" derive from it."""


@dataclass
class RecordedNvml:
    """An NVML module that answers from recorded data: one device, pynvml's call names."""

    device: dict[str, Any]
    compute: list[tuple[int, int | None]] | None = field(default_factory=list)
    graphics: list[tuple[int, int | None]] | None = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    init_error: str | None = None

    NVMLError = NVMLError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def _answer(self, key: str) -> Any:
        value = self.device.get(key)
        if value is None:
            raise NVMLError("Not Supported")
        return value

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle-{index}"

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._answer("driver")

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._answer("cuda")

    def nvmlDeviceGetName(self, handle: str) -> str:
        return self._answer("name")

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return self._answer("uuid")

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        return self._answer({1: "sm", 2: "mem"}[kind])

    def nvmlDeviceGetMaxClockInfo(self, handle: str, kind: int) -> int:
        return self._answer({1: "sm_max", 2: "mem_max"}[kind])

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        return self._answer("power_mw")

    def nvmlDeviceGetEccMode(self, handle: str) -> list[int]:
        return self._answer("ecc")

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        return self._answer("mig")

    @staticmethod
    def _listing(rows: list[tuple[int, int | None]] | None) -> list[SimpleNamespace]:
        if rows is None:
            raise NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in rows]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return self._listing(self.compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return self._listing(self.graphics)

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        if pid not in self.names:
            raise NVMLError("No permission")
        return self.names[pid]


#: An H200 as NVML describes it (pynvml's answers; names as bytes from older pynvml).
H200 = {"name": b"NVIDIA H200", "uuid": "GPU-5e2c0a53-0000-1111-2222-333344445555",
        "driver": "570.124.06", "cuda": 12080, "sm": 1980, "sm_max": 1980, "mem": 3201,
        "mem_max": 3201, "power_mw": 700000, "ecc": [1, 1], "mig": [0, 0]}


def test_read_gpu_records_what_decides_comparability() -> None:
    gpu = read_gpu(RecordedNvml(H200), 0)
    assert (gpu.name, gpu.driver, gpu.cuda_driver) == ("NVIDIA H200", "570.124.06", "12.8")
    assert gpu.uuid.startswith("GPU-5e2c")
    assert (gpu.sm_clock_mhz, gpu.memory_clock_max_mhz, gpu.power_limit_w) == (1980, 3201, 700.0)
    assert (gpu.ecc, gpu.mig, gpu.processes) == (True, False, ())


def test_a_query_the_card_does_not_support_is_none_not_an_error() -> None:
    consumer = {**H200, "name": "NVIDIA GeForce RTX 4090", "ecc": None, "mig": None,
                "power_mw": None}
    gpu = read_gpu(RecordedNvml(consumer), 0)
    assert (gpu.ecc, gpu.mig, gpu.power_limit_w) == (None, None, None)
    assert environment_header("cuda:0", {"gpu": gpu.to_dict(), "torch": "2.11.0"})[0] == (
        "sdmem: cuda:0 NVIDIA GeForce RTX 4090 (GPU-5e2c0a53-0000-1111-2222-333344445555): "
        "driver 570.124.06, CUDA driver 12.8, torch 2.11.0, SM clock 1980/1980 MHz, memory "
        "clock 3201/3201 MHz")


def test_the_device_alone_passes_and_own_processes_do_not_count() -> None:
    nvml = RecordedNvml(H200, compute=[(4242, 600 * 2**20)])
    assert check_machine("cuda:0", 0, nvml, own_pids={4242}).problem is None
    assert check_machine("cuda:0", 0, RecordedNvml(H200), own_pids={1}).problem is None


def test_another_process_is_named_with_its_memory() -> None:
    nvml = RecordedNvml(H200, compute=[(4242, 600 * 2**20), (77, 35_000 * 2**20)],
                        graphics=[(77, 35_000 * 2**20), (5, None)], names={77: "python3"})
    check = check_machine("cuda:0", 0, nvml, own_pids={4242})
    assert check.gpu is not None and len(check.gpu.processes) == 3  # 77 is C+G: once
    assert check.problem is not None
    assert "cuda:0 (NVIDIA H200) is used by 2 other process(es)" in check.problem
    assert "pid 77 (python3, compute, 35000 MiB)" in check.problem
    assert "pid 5 (name not readable, graphics, memory not reported)" in check.problem


@pytest.mark.parametrize(
    ("nvml", "fragment"),
    [
        (None, "nvidia-ml-py is missing"),
        (RecordedNvml(H200, init_error="Driver Not Loaded"), "NVML cannot read it (Driver Not"),
        (RecordedNvml({**H200, "mig": [1, 1]}, compute=None), "MIG mode is on"),
        (RecordedNvml(H200, graphics=None), "NVML cannot list its processes"),
    ],
)
def test_a_check_that_cannot_be_made_says_why(nvml: RecordedNvml | None, fragment: str) -> None:
    problem = check_machine("cuda:0", 0, nvml, own_pids={1}).problem
    assert problem is not None and problem.startswith("cannot check that no other process uses")
    assert fragment in problem


def test_each_worker_makes_its_own_card_current() -> None:
    """diffusers and xformers put tensors on a bare "cuda": the current device of the worker."""
    calls: list[int] = []
    cuda = SimpleNamespace(set_device=calls.append)  # records the call, as torch.cuda takes it
    two_gpus = lambda: (True, 2)  # noqa: E731
    for worker in (0, 1):
        settings = build_settings({"gpu": True}, Path("c"), two_gpus, Workers(2, worker))
        select_device(settings.device, cuda)
    assert calls == [0, 1]


def test_exclusive_needs_a_gpu_and_refuses_sharing() -> None:
    one_gpu = lambda: (True, 1)  # noqa: E731
    assert build_settings({"gpu": True, "sdmem_exclusive": True}, Path("c"), one_gpu).exclusive
    with pytest.raises(SettingsError, match="needs --gpu"):
        build_settings({"sdmem_exclusive": True}, Path("c"), one_gpu)
    with pytest.raises(SettingsError, match="contradict"):
        build_settings({"gpu": True, "sdmem_exclusive": True, "sdmem_share_gpu": True},
                       Path("c"), one_gpu)


def test_only_a_process_that_measures_on_a_gpu_warms_up() -> None:
    gpus = lambda: (True, 2)  # noqa: E731
    gpu = build_settings({"gpu": True}, Path("c"), gpus)
    assert warms_up(gpu, Workers())  # a lone pytest --gpu
    assert warms_up(build_settings({"gpu": True}, Path("c"), gpus, Workers(2, 1)), Workers(2, 1))
    assert not warms_up(gpu, Workers(count=2))  # the xdist controller runs no test
    assert not warms_up(build_settings({}, Path("c"), gpus), Workers())  # the CPU tier
    assert not warms_up(build_settings({"sdmem_estimate": True}, Path("c"), gpus), Workers())


def test_the_session_baseline_is_what_the_warm_up_leaves_alive() -> None:
    """A workspace kept by a library after its first use is real memory: recorded, once."""
    backend = get_backend("cpu")
    kept: list[torch.Tensor] = []
    backend.activate()
    try:
        before = backend.allocated()
        record = session_baseline(
            backend, lambda: (kept.append(torch.ones(2**20, dtype=torch.uint8)),
                              torch.ones(2**21).sum()), "a kept 1 MiB workspace")
    finally:
        backend.deactivate()
    assert record["added_by_warm_up_bytes"] == 2**20  # the temporary 8 MiB is not counted
    assert record["allocated_bytes"] == before + 2**20
    assert record["warm_up"] == "a kept 1 MiB workspace"
    header = environment_header("cpu", {"session_baseline": record})
    assert header[-1].startswith("sdmem: session baseline on cpu: ")


def _run(env: dict[str, Any]) -> RunResults:
    return RunResults(environment=env, results=[
        TestRecord(nodeid="t", outcome="passed", device="cuda:0", device_name="NVIDIA H200",
                   memory=MemorySection(peak_allocated=100))])


def test_compare_warns_when_driver_torch_or_card_differ() -> None:
    base = {"device_name": "NVIDIA H200", "torch": "2.11.0", "cuda_version": "12.8",
            "driver_version": "570.124.06", "gpu": {"uuid": "GPU-a", "driver": "570.124.06"}}
    head = {**base, "torch": "2.12.0", "driver_version": None,
            "gpu": {"uuid": "GPU-b", "driver": "580.65.06"}}
    warnings = environment_differences(base, head)
    assert [w.split(":")[0] for w in warnings] == [
        "the baseline and this run differ in NVIDIA driver",
        "the baseline and this run differ in torch",
        "the baseline and this run differ in GPU (UUID"]
    assert "570.124.06 vs 580.65.06" in warnings[0]
    comparison = compare_runs(_run(base), _run(head))
    assert comparison.deltas, "still compared: same card model"
    assert all(w in comparison.warnings for w in warnings)
    # An older results file without these fields is no difference.
    assert environment_differences({"device_name": "NVIDIA H200"}, head) == []
    assert environment_differences(base, base) == []


def test_a_problem_warns_refuses_under_exclusive_and_is_only_recorded_when_sharing() -> None:
    gpus = lambda: (True, 2)  # noqa: E731
    plain = build_settings({"gpu": True}, Path("c"), gpus)
    exclusive = build_settings({"gpu": True, "sdmem_exclusive": True}, Path("c"), gpus)
    shared = build_settings({"gpu": True, "sdmem_share_gpu": True}, Path("c"), gpus, Workers(2))
    problem = "cuda:0 (NVIDIA H200) is used by 1 other process(es): pid 77"
    assert machine_action(None, exclusive, Workers()) is None
    assert machine_action(problem, plain, Workers()) == "warn"
    assert machine_action(problem, plain, Workers(count=2)) is None  # workers warn, not twice
    assert machine_action(problem, exclusive, Workers(count=2)) == "refuse"
    assert machine_action(problem, exclusive, Workers(2, 1)) == "refuse"
    assert machine_action(problem, shared, Workers(2, 0)) is None


def test_exclusive_without_gpu_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--sdmem-exclusive")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sdmem-exclusive checks that no other process uses the GPU:"
                                 " it needs --gpu*"])
