"""What the technique suite measures besides whole generations: one VAE decode, one UNet step,
and the bytes a loaded pipeline keeps.

Each probe runs inside a ``cuda_mem_tracker`` block, so its figure is a real allocation on the
session's device: CUDA's allocator with ``--gpu``, the exact CPU storage accounting otherwise.
Peaks are read as ``peak_delta`` (what the block added on top of what was alive), so two
pipelines alive side by side, the technique's and its baseline's, do not blur the comparison.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_sdmem.building.runner import SdPipe
from pytest_sdmem.building.techniques import TechniqueSet, example_unet_inputs
from pytest_sdmem.measuring.memory import MemoryReport, MemoryTracker
from pytest_sdmem.plugin.options import resolve

#: Steps a memory claim on SD 1.5 needs with its PNDM scheduler (skip_prk_steps): a memory
#: claim does not depend on the step count once every step has run its full set of tensors.
#: Each step allocates and frees the same activations; what accumulates is the scheduler's
#: history, and PNDM keeps at most its last 4 model outputs (diffusers' step_plms:
#: ``ets[-3:]`` plus the new one). 5 steps are 6 UNet calls, so the history is full and at
#: least one step runs with it full: the peak of step 25 or 50 is the peak of step 5 (the
#: history is 4 latents, 32 KiB per image at 512x512 in fp16, in any case).
PNDM_MEMORY_STEPS = 5

#: The same for UniPC (solver_order 2 by default, keeping 2 model outputs and the last sample
#: for its corrector, which runs from the second step on): 3 steps fill the history and run one
#: step with it full.
UNIPC_MEMORY_STEPS = 3


def without(technique: TechniqueSet, name: str) -> str:
    """The expression of ``technique`` minus ``name``: the baseline that isolates what ``name``
    changes (``fp16+vae_slicing`` without ``vae_slicing`` is ``fp16``)."""
    rest = [t.name for t in technique.techniques if t.key != name]
    return "+".join(rest) or "none"


def latents(sd_pipe: SdPipe, *, batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded latents of ``batch`` images of ``size`` x ``size`` pixels, in the VAE's dtype on
    the pipeline's device: the same seed gives two pipelines the same input."""
    pipe = sd_pipe.pipe
    side = size // pipe.vae_scale_factor
    generator = torch.Generator(device=sd_pipe.device).manual_seed(seed)
    return torch.randn((batch, pipe.vae.config.latent_channels, side, side), generator=generator,
                       device=sd_pipe.device, dtype=pipe.vae.dtype)


def decode(sd_pipe: SdPipe, latents: torch.Tensor, tracker: MemoryTracker) -> np.ndarray:
    """Decode ``latents`` as the pipeline does after its last step, measured by ``tracker``;
    returns images (batch, height, width, 3) in [0, 1].

    The decode alone, because the VAE techniques act there: in a whole generation the UNet's
    attention would set the peak and hide them.
    """
    pipe = sd_pipe.pipe
    with tracker, torch.no_grad():
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type="np")


def unet_step(sd_pipe: SdPipe, tracker: MemoryTracker) -> MemoryReport:
    """One UNet call with the shapes of the pipeline's generation (the batch doubled by
    classifier-free guidance), measured by ``tracker``.

    The attention and offload techniques act inside the UNet, whose attention matrix sets a
    generation's peak; measuring the call itself keeps the VAE out of the figure.
    """
    pipe = sd_pipe.pipe
    sample, timestep, text = example_unet_inputs(pipe, sd_pipe.defaults.context(sd_pipe.device))
    with tracker, torch.no_grad():
        pipe.unet(sample, timestep, encoder_hidden_states=text)
    return tracker.last_report


def load(sd_pipe: SdPipe, technique: str, tracker: MemoryTracker) -> tuple[SdPipe, int]:
    """A fresh pipeline of ``technique`` (same model and device as ``sd_pipe``) and the bytes
    loading it left allocated on the device: its weights and buffers, in the dtype each tensor
    is really stored in. Release the pipeline after use."""
    with tracker:
        fresh = sd_pipe.fresh(technique)
    return fresh, tracker.end_allocated - tracker.start_allocated


def image_bytes(images: np.ndarray, dtype: torch.dtype) -> int:
    """What ``images`` take on the device as decoded tensors of ``dtype``."""
    return images.size * torch.empty((), dtype=dtype).element_size()


def gpu_run(config: pytest.Config) -> bool:
    """Whether this session runs on CUDA (``--gpu`` or the ``sdmem_gpu`` ini key)."""
    return bool(resolve(config, "gpu"))


#: Decided at collection, before the fixture compiles: inductor's C++ code generation for the
#: tiny UNet takes 45-70 s on a 2-core CPU with a cold cache, half of the CPU tier's whole
#: budget. tests/unit checks dynamo's capture with the eager backend; --gpu compiles for real.
#: A module using it imports ``gpu_run`` too: pytest evaluates the condition in its globals.
COMPILE_ON_CPU_IS_TOO_SLOW = pytest.mark.skipif(
    "not gpu_run(config)",
    reason="compile on the CPU: inductor takes 45-70 s to compile the tiny UNet on 2 cores with "
           "a cold cache, over the CPU tier's time budget; runs with --gpu",
)
