"""Attention: the memory-efficient processors against the guide's original one, and xFormers
against PyTorch's SDPA."""

from __future__ import annotations

import pytest
from probes import unet_step

from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.runner import SdPipe
from pytest_sdmem.building.techniques import parse_technique, unmet_requirements
from pytest_sdmem.measuring.memory import MemoryTracker

#: The guide's "original": fp32 and the classic processor that materialises the whole
#: attention matrix (batch x heads x tokens x tokens) in every attention layer.
CLASSIC = "none"


@pytest.mark.sd_family("sd1", "sd2")  # one UNet step with SD 1.x/2.x's inputs (probes.unet_step)
@pytest.mark.parametrize(
    ("sd_pipe", "max_fraction"),
    [
        # "auto": slices of half the heads, at most half the attention matrix at once.
        pytest.param("attention_slicing", 3 / 4, id="attention_slicing"),
        # One head at a time (diffusers' "max").
        pytest.param("attention_slicing(1)", 1 / 2, id="attention_slicing(1)"),
        # Never materialises the matrix.
        pytest.param("sdpa", 1 / 2, id="sdpa"),
    ],
    indirect=["sd_pipe"],
)
def test_memory_efficient_attention_lowers_the_unet_peak(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker,
    max_fraction: float,
) -> None:
    """diffusers' own GPU test: SD 1.5 in fp16 peaks below 3.75e9 bytes with attention slicing
    and above without; diffusers issue 3441: VRAM grew where a processor lost its
    memory-efficient version.

    At the generation's resolution the classic processor's attention matrix dominates a UNet
    step (64x64 on tiny, 512x512 on SD 1.5), so one UNet step with the technique peaks at
    ``max_fraction`` of the classic step at most; and the images stay the classic ones.
    """
    peak = unet_step(sd_pipe, cuda_mem_tracker).peak_delta
    with sd_pipe.fresh(CLASSIC) as classic:  # loaded once for both comparisons
        classic_peak = unet_step(classic, baseline_mem_tracker).peak_delta
        assert peak <= max_fraction * classic_peak, (
            f"{sd_pipe.technique}: a UNet step peaked at {format_size(peak)}, more than "
            f"{max_fraction:.2f} of the classic processor's {format_size(classic_peak)}")
        sd_pipe.assert_matches_baseline(classic)


_PARITY = (("fp16+xformers", "fp16+sdpa"), ("fp16+sdpa", "fp16+xformers"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("sd_pipe", "other"),
    [
        pytest.param(
            mine, other, id=f"{mine}-vs-{other}",
            marks=pytest.mark.min_speedup(budget="attention_backends_parity", baseline=other),
        )
        for mine, other in _PARITY
    ],
    indirect=["sd_pipe"],
)
def test_xformers_and_sdpa_are_interchangeable(sd_pipe: SdPipe, other: str) -> None:
    """Guide: on PyTorch >= 2, xFormers gives no speed-up over SDPA; diffusers issue 1577:
    xFormers once made SD 2.0 slower.

    Each is at least ``attention_backends_parity`` times as fast as the other (both directions
    together: the same speed within the budget's margin), and both give the same images.
    """
    missing = unmet_requirements(parse_technique(other), sd_pipe.device)
    if missing:
        pytest.skip("; ".join(missing))
    sd_pipe.assert_matches_baseline(other)
