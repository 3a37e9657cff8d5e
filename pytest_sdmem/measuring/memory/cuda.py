"""Memory backend for one CUDA device: the caching allocator's own statistics, plus NVML.

The allocator counts every allocation exactly, so this layer only reads it; everything a
measurement does beyond reading (peak windows, folding, reports) is shared with the CPU path
in ``tracker.py``. Importing this module is safe without CUDA; constructing a backend is not,
and says why.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pytest_sdmem.measuring.memory.tracker import TrackerError

NVML_MISSING = "metric 'process' needs nvidia-ml-py: pip install pytest-sdmem[nvml]"


def device_index(device: str) -> int:
    """The index N of "cuda:N" ("cuda" is 0)."""
    return int(device.partition(":")[2] or 0)


def select_device(device: str, cuda: Any = torch.cuda) -> None:
    """Make ``device`` the process's current CUDA device, before anything touches CUDA.

    diffusers, accelerate and xformers create tensors on a bare ``"cuda"`` in places, which is
    the current device; left at 0, every pytest-xdist worker would open a context on GPU 0 and
    put part of its work there. ``cuda`` is ``torch.cuda`` (a parameter so the call can be
    checked without a GPU).
    """
    cuda.set_device(device_index(device))


class CudaBackend:
    """Reads ``torch.cuda`` allocator statistics for ``cuda:N``."""

    def __init__(self, device: str):
        index = device_index(device)
        if not torch.cuda.is_available():
            raise TrackerError(
                f"cannot measure {device}: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        count = torch.cuda.device_count()
        if index >= count:
            raise TrackerError(f"cannot measure {device}: {count} CUDA device(s) visible")
        props = torch.cuda.get_device_properties(index)
        self.device = f"cuda:{index}"
        self.index = index
        self.device_name: str = props.name
        self.total_memory: int | None = props.total_memory
        self._nvml_handle: object | None = None

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.index)

    def reserved(self) -> int:
        return torch.cuda.memory_reserved(self.index)

    def peak_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.index)

    def peak_reserved(self) -> int:
        return torch.cuda.max_memory_reserved(self.index)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)

    def settle(self) -> None:
        """Wait for queued kernels, free dead tensors, and hand the cache back to the driver.

        Emptying the cache before a reset makes the reserved peak what the block needs from
        the driver, rather than whatever earlier code (fixture setup) left cached.
        """
        torch.cuda.synchronize(self.index)
        gc.collect()
        torch.cuda.empty_cache()

    def counters(self) -> dict[str, int]:
        stats = torch.cuda.memory_stats(self.index)
        return {
            "num_alloc_retries": stats.get("num_alloc_retries", 0),
            "num_ooms": stats.get("num_ooms", 0),
        }

    def process_bytes(self) -> int | None:
        """This process's memory on the device as the driver (NVML) sees it: context included."""
        try:
            import pynvml
        except ImportError:
            raise TrackerError(NVML_MISSING) from None
        try:
            if self._nvml_handle is None:
                pynvml.nvmlInit()
                nvml_index = torch.cuda._get_nvml_device_index(self.index)
                self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(self._nvml_handle)
        except (pynvml.NVMLError, RuntimeError) as exc:
            raise TrackerError(f"NVML cannot read {self.device}: {exc}") from exc
        pid = os.getpid()
        for process in processes:
            if process.pid == pid and process.usedGpuMemory is not None:
                return int(process.usedGpuMemory)
        if not torch.cuda.is_initialized():
            return 0  # no context yet: the process really holds nothing on the device
        raise TrackerError(
            f"NVML lists no memory for pid {pid} on {self.device}: in a container NVML "
            "reports host process ids (run the container with --pid=host), and under MIG "
            "or WDDM it reports no per-process memory"
        )

    def activate(self) -> None:
        """Nothing to install: the caching allocator counts all the time."""

    def deactivate(self) -> None:
        """Nothing to remove (see ``activate``)."""


# --- the machine check: what the driver (NVML) says about the device before a session -------
#
# Every NVML call of the session goes through ``read_gpu`` with the NVML module passed in:
# ``pynvml`` on a GPU machine, or an object holding an NVML's recorded answers in the tests,
# so the code that judges a machine is the code that runs on one.

NVML_FOR_CHECK = ("cannot check that no other process uses {device}: nvidia-ml-py is missing "
                  "(pip install pytest-sdmem[nvml])")


def load_nvml() -> Any | None:
    """The ``pynvml`` module (from nvidia-ml-py), or None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


@dataclass(frozen=True)
class GpuProcess:
    """A process with a context on the device, as NVML lists it."""

    pid: int
    name: str | None
    used_bytes: int | None
    kind: str  # "compute" or "graphics"

    def __str__(self) -> str:
        used = (f"{self.used_bytes / 2**20:.0f} MiB" if self.used_bytes is not None
                else "memory not reported")
        return f"pid {self.pid} ({self.name or 'name not readable'}, {self.kind}, {used})"


@dataclass(frozen=True)
class GpuInfo:
    """One device as the driver describes it: what decides whether two runs are comparable.

    A field NVML cannot read on this device (not supported, no permission) is None.
    ``processes`` is None when NVML could not list them (e.g. under MIG), which is not the
    same as an empty list.
    """

    nvml_index: int
    name: str | None
    uuid: str | None
    driver: str | None
    cuda_driver: str | None  # the newest CUDA the driver supports, e.g. "12.8"
    sm_clock_mhz: int | None
    sm_clock_max_mhz: int | None
    memory_clock_mhz: int | None
    memory_clock_max_mhz: int | None
    power_limit_w: float | None
    ecc: bool | None
    mig: bool | None
    processes: tuple[GpuProcess, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def others(self, own_pids: Iterable[int]) -> list[GpuProcess] | None:
        """The processes on the device that are not this session's (None: unknown)."""
        if self.processes is None:
            return None
        own = set(own_pids)
        return [p for p in self.processes if p.pid not in own]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read(nvml: Any, call: Callable[..., Any], *args: Any) -> Any:
    """One NVML query, or None when this device or driver cannot answer it."""
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def _enabled(nvml: Any, call: Callable[..., Any], handle: Any) -> bool | None:
    """The current mode of a (current, pending) NVML mode query."""
    modes = _read(nvml, call, handle)
    return None if modes is None else bool(modes[0])


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...] | None:
    seen: dict[int, GpuProcess] = {}
    for kind, call in (("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
                       ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
        listed = _read(nvml, call, handle)
        if listed is None:
            return None
        for process in listed:
            pid = int(process.pid)
            if pid in seen:  # both kinds ("C+G"): one process
                continue
            name = _read(nvml, nvml.nvmlSystemGetProcessName, pid)
            used = getattr(process, "usedGpuMemory", None)
            seen[pid] = GpuProcess(pid, _text(name) if name is not None else None,
                                   int(used) if used is not None else None, kind)
    return tuple(seen.values())


def read_gpu(nvml: Any, nvml_index: int) -> GpuInfo:
    """Everything the session records about device ``nvml_index``, read through ``nvml``.

    Raises ``nvml.NVMLError`` only when NVML itself or the device cannot be opened.
    """
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
    cuda = _read(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    power = _read(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)

    def clock(call: Callable[..., Any], kind: int) -> int | None:
        value = _read(nvml, call, handle, kind)
        return int(value) if value is not None else None

    name, uuid = (_read(nvml, nvml.nvmlDeviceGetName, handle),
                  _read(nvml, nvml.nvmlDeviceGetUUID, handle))
    driver = _read(nvml, nvml.nvmlSystemGetDriverVersion)
    return GpuInfo(
        nvml_index=nvml_index,
        name=_text(name) if name is not None else None,
        uuid=_text(uuid) if uuid is not None else None,
        driver=_text(driver) if driver is not None else None,
        cuda_driver=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda is not None else None,
        sm_clock_mhz=clock(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
        sm_clock_max_mhz=clock(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM),
        memory_clock_mhz=clock(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
        memory_clock_max_mhz=clock(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_MEM),
        power_limit_w=power / 1000 if power is not None else None,
        ecc=_enabled(nvml, nvml.nvmlDeviceGetEccMode, handle),
        mig=_enabled(nvml, nvml.nvmlDeviceGetMigMode, handle),
        processes=_processes(nvml, handle),
    )


@dataclass(frozen=True)
class MachineCheck:
    """The device before the session: its description, and what stands against measuring on
    it (``problem``: other processes on it, or why that could not be checked)."""

    gpu: GpuInfo | None
    problem: str | None


def check_machine(device: str, nvml_index: int, nvml: Any | None,
                  own_pids: Iterable[int]) -> MachineCheck:
    """Describe ``device`` and check that no process outside ``own_pids`` uses it.

    Another process's memory and kernels make both memory figures (``process``, and the
    allocator's behaviour near a full card) and speed figures wrong, so the session must know.
    Run it before this process creates its own CUDA context: in a container NVML lists host
    process ids, which would not match ``own_pids``.
    """
    if nvml is None:
        return MachineCheck(None, NVML_FOR_CHECK.format(device=device))
    try:
        gpu = read_gpu(nvml, nvml_index)
    except nvml.NVMLError as exc:
        return MachineCheck(None, f"cannot check that no other process uses {device}: NVML "
                                  f"cannot read it ({_text(exc)})")
    others = gpu.others(own_pids)
    label = f"{device} ({gpu.name or 'unnamed'})"
    if others is None:
        why = "MIG mode is on" if gpu.mig else "NVML cannot list its processes"
        return MachineCheck(gpu, f"cannot check that no other process uses {label}: {why}")
    if not others:
        return MachineCheck(gpu, None)
    return MachineCheck(gpu, (
        f"{label} is used by {len(others)} other process(es): "
        f"{'; '.join(map(str, others))}. Their memory and kernels make this session's memory "
        "and speed figures wrong (in a container, NVML names host process ids)"))


#: What ``warm_up`` runs, as the results record it.
WARM_UP = ("matmul and linear with bias (cuBLAS, cuBLASLt) in fp32, fp16 and bf16, conv2d "
           "(cuDNN), scaled_dot_product_attention")


def warm_up(device: str) -> None:
    """Create the per-process state that CUDA libraries keep once created, before any test.

    cuBLAS and cuBLASLt allocate their workspace per handle and stream through the caching
    allocator at the first matmul (8 MiB + 1 MiB by default, 32 MiB + 1 MiB on sm90) and keep
    it for the process (``empty_cache`` does not free it); cuDNN and the attention kernels
    load and set up on first use. Done here, the first test neither leaves it behind as a
    "leak" nor has it inside its measured window; every test's absolute peak includes it, as
    a real process's does, and the session reports it once as its baseline.
    """
    dtypes = [torch.float32, torch.float16]
    if torch.cuda.is_bf16_supported(including_emulation=False):  # native bf16 only (sm80+)
        dtypes.append(torch.bfloat16)
    with torch.no_grad(), torch.cuda.device(device_index(device)):
        for dtype in dtypes:
            a = torch.ones(64, 64, device=device, dtype=dtype)
            torch.nn.functional.linear(a @ a, a, a[0])
            image = torch.ones(1, 4, 16, 16, device=device, dtype=dtype)
            torch.nn.functional.conv2d(image, torch.ones(4, 4, 3, 3, device=device, dtype=dtype),
                                       padding=1)
            q = torch.ones(1, 2, 16, 64, device=device, dtype=dtype)
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize(device)
