"""Offloading: weights kept on the host and brought to the GPU when needed.

Every offload mode needs a CUDA device; on the CPU these tests are skipped with the registry's
reason (``sequential_offload needs a CUDA device: run with --gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from probes import unet_step, without

from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.runner import SdPipe
from pytest_sdmem.measuring.memory import MemoryTracker

#: Memory does not depend on the number of steps, and sequential offload moves every weight to
#: the GPU and back at each step: diffusers' own offload tests run 5.
OFFLOAD_STEPS = 5


@pytest.mark.parametrize(
    "sd_pipe", ["sequential_offload", "model_offload", "group_offload"], indirect=True
)
def test_offload_keeps_the_images(sd_pipe: SdPipe) -> None:
    """diffusers issues 11981 and 12673: group offloading produced wrong images; 5060: a
    release broke both accelerate offload modes.

    Offloading moves weights, not math: in fp32 the images stay those of the pipeline fully on
    the device, within the tolerance of identical kernels.
    """
    sd_pipe.assert_matches_baseline("none", num_inference_steps=OFFLOAD_STEPS)


@pytest.mark.gpu
@pytest.mark.sd_family("sd1")  # SD 1.5's figures
@pytest.mark.parametrize(
    "sd_pipe",
    [
        pytest.param("fp16+sequential_offload",
                     marks=pytest.mark.max_vram(budget="sequential_offload")),
        pytest.param("fp16+attention_slicing(1)+sequential_offload",
                     marks=pytest.mark.max_vram(budget="sequential_offload_attention_slicing")),
    ],
    indirect=True,
)
def test_sequential_offload_keeps_vram_low(sd_pipe: SdPipe) -> None:
    """Guide, sequential CPU offload: SD 1.5 in fp16 runs in under 3 GB of VRAM; diffusers' own
    test: with ``enable_attention_slicing(1)`` under 2.8e9 bytes. diffusers issue 1934:
    offloading after ``.to("cuda")`` saved almost nothing (the registry never moves the pipeline
    first, and this budget would catch it)."""
    images = sd_pipe(num_inference_steps=OFFLOAD_STEPS)
    assert np.isfinite(images).all()


@pytest.mark.gpu
@pytest.mark.sd_family("sd1")  # SD 1.5's figures
# diffusers' setup of its 3.5e9 threshold: fp16, the classic UNet attention processor, the
# safety checker resident (sd15 loads it; model offload keeps it on the GPU), PNDM, 512x512;
# why sm90 cards get 24 MiB more (their cuBLAS workspace) is in budgets.toml.
@pytest.mark.max_vram(budget="model_offload")
@pytest.mark.min_speedup(budget="model_offload_vs_gpu", baseline="fp16")
@pytest.mark.parametrize("sd_pipe", ["fp16+model_offload"], indirect=True)
def test_model_offload_saves_vram_at_almost_no_latency(sd_pipe: SdPipe) -> None:
    """Guide, model CPU offload: whole models move to the GPU on demand, with "almost no
    latency impact" against ``.to("cuda")``; diffusers' own test: under 3.5e9 bytes. diffusers
    issue 2266: sequential offload was over 3x slower, which is why model offload exists.

    Timed on the guide's 50 steps: the models' trips to the GPU and back are per call, so
    fewer steps would overstate their weight. The guide's "almost no latency" (the suite once
    allowed 1.2x) is what was claimed; the bound checked, budget ``model_offload_vs_gpu``, is
    derived in budgets.toml from the 5.48 GB copied per generation over PCIe from pageable
    memory (~8 GB/s) against the fastest generation of the tier: at most 1.59x slower.
    """
    images = sd_pipe(num_inference_steps=50)
    assert np.isfinite(images).all()


@pytest.mark.gpu
@pytest.mark.sd_family("sd1", "sd2")  # one UNet step with SD 1.x/2.x's inputs (probes.unet_step)
@pytest.mark.parametrize("sd_pipe", ["fp16+group_offload"], indirect=True)
def test_group_offload_memory_order(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker
) -> None:
    """diffusers' own group offloading test: the peak memory of a forward pass orders as
    leaf-level offload < block-level offload < no offload.

    One UNet step of each, with nothing else on the GPU (absolute peaks): the registry's
    leaf-level ``group_offload``, then the fp16 pipeline fully on the GPU, then the same
    pipeline moved back to the host with block-level offloading of its UNet (one block per
    group, through diffusers' model API: the registry has the leaf level only).
    """
    leaf = unet_step(sd_pipe, cuda_mem_tracker).peak_allocated
    with sd_pipe.fresh(without(sd_pipe.technique, "group_offload")) as full:
        on_gpu = unet_step(full, baseline_mem_tracker).peak_allocated
        full.pipe.to("cpu", silence_dtype_warnings=True)
        full.pipe.unet.enable_group_offload(onload_device=torch.device(sd_pipe.device),
                                            offload_type="block_level", num_blocks_per_group=1)
        block = unet_step(full, baseline_mem_tracker).peak_allocated

    assert leaf < block < on_gpu, (
        f"UNet step peaks: leaf-level {format_size(leaf)}, block-level {format_size(block)}, "
        f"no offload {format_size(on_gpu)}")
