"""The card an estimate stands for, and the cuBLAS workspaces that depend on it."""

from __future__ import annotations

import pytest

from pytest_sdmem.estimate.blas import (
    BlasConfigError,
    blas_workspaces,
    cublas_workspace,
    cublaslt_workspace,
)
from pytest_sdmem.estimate.gpus import DEFAULT_GPU, GPUS, gpu_for

MIB = 2**20


@pytest.mark.parametrize(("name", "card", "sm"), [
    (None, DEFAULT_GPU, 80),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", 80),
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", 80),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", 90),
    ("nvidia h100 pcie", "NVIDIA H100 PCIe", 90),
    ("NVIDIA H100", "NVIDIA H100 80GB HBM3", 90),  # the family's first row
    ("NVIDIA H200", "NVIDIA H200", 90),
    ("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-16GB", 70),
    ("Tesla T4", "Tesla T4", 75),
    ("NVIDIA A10", "NVIDIA A10", 86),  # not the A100: whole words
    ("NVIDIA L4", "NVIDIA L4", 89),
    ("NVIDIA L40S", "NVIDIA L40S", 89),
    ("RTX 3090", "NVIDIA GeForce RTX 3090", 86),
    ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", 89),
])
def test_device_names_map_to_cards(name: str | None, card: str, sm: int) -> None:
    gpu = gpu_for(name)
    assert (gpu.name, gpu.sm, gpu.known) == (card, sm, True)


def test_every_card_is_found_by_its_own_name() -> None:
    assert all(gpu_for(gpu.name) is gpu for gpu in GPUS)
    assert len({gpu.name for gpu in GPUS}) == len(GPUS)


def test_an_unknown_card_keeps_its_name_and_says_whose_kernels_it_gets() -> None:
    gpu = gpu_for(" NVIDIA Test GPU ")
    assert gpu.name == "NVIDIA Test GPU" and not gpu.known
    assert gpu.capability == gpu_for(None).capability
    assert f"not in the card table: kernels chosen as on {DEFAULT_GPU}" in gpu.describe()
    assert "sm80" in gpu_for(None).describe()


def test_cublas_workspace_is_32_mib_on_sm90_and_8_125_elsewhere() -> None:
    assert cublas_workspace(gpu_for("NVIDIA H100 80GB HBM3")) == 32 * MIB
    for name in ("NVIDIA A100-SXM4-80GB", "Tesla T4", "NVIDIA L4", "NVIDIA GeForce RTX 4090"):
        assert cublas_workspace(gpu_for(name)) == 8 * MIB + 128 * 1024
    assert cublaslt_workspace() == MIB
    both = blas_workspaces(gpu_for("NVIDIA H200"), {})
    assert both.total == 33 * MIB and "cuBLAS 32 MiB + cuBLASLt 1 MiB" in both.describe()


def test_workspace_variables_override_the_defaults_and_bad_ones_are_refused() -> None:
    a100 = gpu_for(None)
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "CUBLASLT_WORKSPACE_SIZE": "4096"}
    assert blas_workspaces(a100, env).total == 32 * MIB + 4 * MIB
    assert cublas_workspace(a100, ":4096:2:16:8") == 8 * MIB + 128 * 1024  # pairs add up
    assert cublas_workspace(a100, ":0:0") == 0
    with pytest.raises(BlasConfigError, match="CUBLAS_WORKSPACE_CONFIG='4096'"):
        cublas_workspace(a100, "4096")
    with pytest.raises(BlasConfigError, match="CUBLASLT_WORKSPACE_SIZE='1MB'"):
        cublaslt_workspace("1MB")
