"""The VAE techniques of the guide: sliced decoding for big batches, tiled decoding for big
images.

Each claim is checked as a ratio between the technique and the same pipeline without it,
measured in one run on the session's device, so the tests hold on the CPU (tiny pipeline) and,
with ``--gpu``, on SD 1.5 on CUDA. Sizes are derived from the model, never from figures this
code produced.
"""

from __future__ import annotations

import numpy as np
import pytest
from probes import (
    PNDM_MEMORY_STEPS,
    UNIPC_MEMORY_STEPS,
    decode,
    image_bytes,
    latents,
    without,
)

from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.runner import SdPipe, compare_images
from pytest_sdmem.building.techniques import SAME_MATH
from pytest_sdmem.measuring.memory import MemoryTracker


@pytest.mark.parametrize(
    ("sd_pipe", "batch", "max_fraction"),
    [
        pytest.param("vae_slicing", 8, 1 / 3, id="vae_slicing-batch8"),
        # The guide's batch of 32, in fp16 as the guide runs it: unsliced it needs tens of GB.
        pytest.param("fp16+vae_slicing", 32, 1 / 8,
                     marks=[pytest.mark.gpu, pytest.mark.sd_family("sd1")],
                     id="fp16+vae_slicing-batch32"),
    ],
    indirect=["sd_pipe"],
)
def test_vae_slicing_decodes_a_batch_one_image_at_a_time(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker,
    batch: int, max_fraction: float,
) -> None:
    """Guide, sliced VAE: "decodes a batch one image at a time", so a batch of 32 or more fits.

    Decoding ``batch`` images sliced peaks at ``max_fraction`` of the unsliced peak at most
    (one image at a time would be 1/batch), grows from one image to the whole batch by no more
    than the decoded images themselves (held twice: the per-image outputs and their
    concatenation) and the batch's latents divided by the scaling factor (16 channels in SD 3's
    and Flux's VAE, 4 in SD's), and gives the unsliced images.
    """
    size = sd_pipe.defaults.height
    batch_latents = latents(sd_pipe, batch=batch, size=size)
    sliced = decode(sd_pipe, batch_latents, cuda_mem_tracker)
    sliced_peak = cuda_mem_tracker.peak_delta
    decode(sd_pipe, latents(sd_pipe, batch=1, size=size), cuda_mem_tracker)
    single_peak = cuda_mem_tracker.peak_delta
    with sd_pipe.fresh(without(sd_pipe.technique, "vae_slicing")) as unsliced_pipe:
        unsliced = decode(unsliced_pipe, latents(unsliced_pipe, batch=batch, size=size),
                          baseline_mem_tracker)
        unsliced_peak = baseline_mem_tracker.peak_delta

    assert sliced_peak <= max_fraction * unsliced_peak, (
        f"sliced decode of {batch} images peaked at {format_size(sliced_peak)}, more than "
        f"{max_fraction:.3f} of the unsliced {format_size(unsliced_peak)}")
    growth = sliced_peak - single_peak
    scaled_latents = batch_latents.numel() * batch_latents.element_size()
    assert growth <= 2 * image_bytes(sliced, sd_pipe.pipe.vae.dtype) + scaled_latents, (
        f"sliced decode grew by {format_size(growth)} from 1 to {batch} images")
    diff = compare_images(sliced, unsliced, sd_pipe.technique.output_tolerance)
    assert diff.ok, f"sliced images differ from unsliced: {diff}"


@pytest.mark.gpu
@pytest.mark.sd_family("sd1")  # SD 1.5's figures
@pytest.mark.max_vram(budget="vae_slicing_batch32")
@pytest.mark.parametrize("sd_pipe", ["fp16+sdpa+vae_slicing"], indirect=True)
def test_vae_slicing_fits_a_batch_of_32(sd_pipe: SdPipe) -> None:
    """Guide, sliced VAE: with fp16, memory-efficient attention and the sliced VAE, a batch of
    32 images of 512x512 fits on the card of its table (budget ``vae_slicing_batch32``).

    ``PNDM_MEMORY_STEPS`` steps, not the tier's 25: the claim is memory, and the peak stops
    growing once the scheduler's history is full (probes.PNDM_MEMORY_STEPS says why).
    """
    images = sd_pipe(batch_size=32, num_inference_steps=PNDM_MEMORY_STEPS)
    assert images.shape[0] == 32 and np.isfinite(images).all()


@pytest.mark.parametrize("sd_pipe", ["vae_tiling"], indirect=True)
def test_vae_tiling_bounds_the_decode_peak(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker
) -> None:
    """Guide, tiled VAE: tiles are decoded separately, which is how a 4K image fits in 8 GB;
    tone may vary between tiles but no seams show.

    Above the tiling threshold (the VAE's ``sample_size``: 512 px for SD 1.5) the tiled decode
    peaks at a third of the untiled one at most, and grows by a quarter at most from 2x to 3x
    the threshold while the untiled peak at least doubles (2.25x the pixels); the images stay
    within the tiling tolerance of the untiled ones.
    """
    threshold = sd_pipe.pipe.vae.config.sample_size
    small, large = 2 * threshold, 3 * threshold
    tiled_images = decode(sd_pipe, latents(sd_pipe, batch=1, size=small), cuda_mem_tracker)
    tiled = {small: cuda_mem_tracker.peak_delta}
    decode(sd_pipe, latents(sd_pipe, batch=1, size=large), cuda_mem_tracker)
    tiled[large] = cuda_mem_tracker.peak_delta
    with sd_pipe.fresh(without(sd_pipe.technique, "vae_tiling")) as untiled_pipe:
        untiled_images = decode(untiled_pipe, latents(untiled_pipe, batch=1, size=small),
                                baseline_mem_tracker)
        untiled = {small: baseline_mem_tracker.peak_delta}
        decode(untiled_pipe, latents(untiled_pipe, batch=1, size=large), baseline_mem_tracker)
        untiled[large] = baseline_mem_tracker.peak_delta

    peaks = ", ".join(f"{name} {size}px {format_size(peak)}" for name, figures in
                      (("tiled", tiled), ("untiled", untiled)) for size, peak in figures.items())
    assert tiled[small] <= untiled[small] / 3, peaks
    assert untiled[large] >= 2 * untiled[small], peaks
    assert tiled[large] <= 1.25 * tiled[small], peaks
    diff = compare_images(tiled_images, untiled_images, sd_pipe.technique.output_tolerance)
    assert diff.ok, f"tiled images at {small}x{small} differ from untiled: {diff}"


@pytest.mark.parametrize("sd_pipe", ["vae_tiling"], indirect=True)
def test_vae_tiling_is_off_up_to_the_threshold(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker
) -> None:
    """Guide, tiled VAE: "tiling is off for 512x512 and smaller" (SD 1.5's VAE ``sample_size``).

    At the threshold the tiled VAE decodes in one piece: the same peak (within 1%) and the same
    images as the untiled VAE.
    """
    size = sd_pipe.pipe.vae.config.sample_size
    tiled = decode(sd_pipe, latents(sd_pipe, batch=1, size=size), cuda_mem_tracker)
    tiled_peak = cuda_mem_tracker.peak_delta
    with sd_pipe.fresh(without(sd_pipe.technique, "vae_tiling")) as untiled_pipe:
        untiled = decode(untiled_pipe, latents(untiled_pipe, batch=1, size=size),
                         baseline_mem_tracker)
        untiled_peak = baseline_mem_tracker.peak_delta

    assert tiled_peak == pytest.approx(untiled_peak, rel=0.01), (
        f"at {size}x{size} the tiled decode peaked at {format_size(tiled_peak)}, the untiled "
        f"at {format_size(untiled_peak)}")
    diff = compare_images(tiled, untiled, SAME_MATH)
    assert diff.ok, f"at {size}x{size} the tiled VAE changed the images: {diff}"


@pytest.mark.gpu
@pytest.mark.sd_family("sd1")  # SD 1.5's figures
@pytest.mark.max_vram(budget="vae_tiling_4k")
@pytest.mark.parametrize("sd_pipe", ["fp16+sdpa+vae_tiling"], indirect=True)
def test_vae_tiling_fits_a_4k_image_in_8gb(sd_pipe: SdPipe) -> None:
    """Guide, tiled VAE: a 3840x2224 image, 20 steps of the UniPC scheduler, fp16 with
    memory-efficient attention (the guide's xFormers; SDPA here, equally memory-efficient and
    with no extra package) fits in 8 GB of VRAM (budget ``vae_tiling_4k``).

    ``UNIPC_MEMORY_STEPS`` steps, not the guide's 20: the claim is memory, and the peak stops
    growing once the scheduler's history is full (probes.UNIPC_MEMORY_STEPS says why); each
    step at this size costs seconds of attention over 133,440 latent positions.
    """
    images = sd_pipe(height=2224, width=3840, num_inference_steps=UNIPC_MEMORY_STEPS,
                     scheduler="UniPCMultistepScheduler")
    assert images.shape == (1, 2224, 3840, 3) and np.isfinite(images).all()
