"""The cuBLAS and cuBLASLt workspaces: allocated through the caching allocator and kept.

PyTorch gives each (cuBLAS handle, stream) pair a workspace the first time a matrix product
runs on that stream (aten/src/ATen/cuda/CublasHandlePool.cpp, ``getCurrentCUDABlasHandle`` ->
``getCUDABlasWorkspace``), allocated with ``CUDACachingAllocator::get()->allocate`` and never
freed: from the first matmul on it is inside ``memory_allocated`` and so inside every
``max_memory_allocated`` after it. Its size (``getChosenWorkspaceSize``) is
``CUBLAS_WORKSPACE_CONFIG`` when set (":SIZE_KIB:COUNT" pairs, summed), else 32 MiB on sm90
(Hopper) and 4096 KiB x 2 + 16 KiB x 8 = 8.125 MiB on every other card. cuBLASLt, which
``addmm`` with a bias (every ``nn.Linear`` on a contiguous input) goes through, has its own
workspace per stream (aten/src/ATen/cuda/CUDABlas.cpp, ``CUBLASLT_WORKSPACE_SIZE`` in KiB,
default 1024 KiB).

The pipeline's matrix products all run on the default stream, so one of each is counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_sdmem.estimate.gpus import Gpu

KIB = 1024
#: cuBLAS's default workspace on sm90 (Hopper) and on every other compute capability.
CUBLAS_SM90_DEFAULT = 4096 * 8 * KIB
CUBLAS_DEFAULT = 4096 * KIB * 2 + 16 * KIB * 8
#: cuBLASLt's default workspace, in KiB as its variable states it.
CUBLASLT_DEFAULT_KIB = 1024


class BlasConfigError(ValueError):
    """``CUBLAS_WORKSPACE_CONFIG`` or ``CUBLASLT_WORKSPACE_SIZE`` cannot be read."""


@dataclass(frozen=True)
class BlasWorkspaces:
    """The two workspaces a process's first matrix product allocates on a stream (bytes)."""

    cublas: int
    cublaslt: int

    @property
    def total(self) -> int:
        return self.cublas + self.cublaslt

    def describe(self) -> str:
        return (f"cuBLAS {self.cublas / 2**20:g} MiB + cuBLASLt {self.cublaslt / 2**20:g} MiB "
                "workspace (kept from the first matmul)")


def cublas_workspace(gpu: Gpu, config: str | None = None) -> int:
    """``getChosenWorkspaceSize``: ``CUBLAS_WORKSPACE_CONFIG`` (":4096:8" = 8 x 4096 KiB;
    several pairs add up) or the card's default."""
    if config is None or not config.strip():
        return CUBLAS_SM90_DEFAULT if gpu.capability == (9, 0) else CUBLAS_DEFAULT
    pairs = re.fullmatch(r"(:\d+:\d+)+", config.strip())
    if pairs is None:
        raise BlasConfigError(f"CUBLAS_WORKSPACE_CONFIG={config!r} is not ':SIZE_KIB:COUNT' "
                              "pairs (e.g. ':4096:8')")
    numbers = [int(n) for n in re.findall(r"\d+", config)]  # an even count: the regex above
    return sum(size * KIB * count
               for size, count in zip(numbers[::2], numbers[1::2], strict=True))


def cublaslt_workspace(size_kib: str | None = None) -> int:
    """``CUBLASLT_WORKSPACE_SIZE`` (KiB) or the 1024 KiB default."""
    if size_kib is None or not size_kib.strip():
        return CUBLASLT_DEFAULT_KIB * KIB
    if not size_kib.strip().isdigit():
        raise BlasConfigError(f"CUBLASLT_WORKSPACE_SIZE={size_kib!r} is not a size in KiB")
    return int(size_kib) * KIB


def blas_workspaces(gpu: Gpu, environ: Mapping[str, str] | None = None) -> BlasWorkspaces:
    """The workspaces of ``gpu`` under the environment's settings (``os.environ`` by default:
    the variables of the process the estimate stands for are those of this one)."""
    env = os.environ if environ is None else environ
    return BlasWorkspaces(cublas_workspace(gpu, env.get("CUBLAS_WORKSPACE_CONFIG")),
                          cublaslt_workspace(env.get("CUBLASLT_WORKSPACE_SIZE")))
