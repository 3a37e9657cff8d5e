"""Memory backend for one CUDA device: the caching allocator's own statistics, plus NVML.

The allocator counts every allocation exactly, so this layer only reads it; everything a
measurement does beyond reading (peak windows, folding, reports) is shared with the CPU path
in ``tracker.py``. Importing this module is safe without CUDA; constructing a backend is not,
and says why.
"""

from __future__ import annotations

import gc
import os

import torch

from pytest_sdmem.memory.tracker import TrackerError

NVML_MISSING = "metric 'process' needs nvidia-ml-py: pip install pytest-sdmem[nvml]"


class CudaBackend:
    """Reads ``torch.cuda`` allocator statistics for ``cuda:N``."""

    def __init__(self, device: str):
        index = int(device.partition(":")[2] or 0)
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
