"""Techniques that change how the weights are stored: their dtype (``fp16``, ``bf16`` and the
fp32 baseline), float8 storage (``layerwise_casting``) and memory format (``channels_last``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.building.techniques.context import ApplyContext, Pipe, denoiser


class _NoModuleKeptInFloat32(logging.Filter):
    """Drops diffusers' notice, logged by ``ModelMixin.to(dtype)`` for every model, that the
    model's modules to keep in float32 are ``[]``: Stable Diffusion's models have none, so the
    notice says nothing and would print on every fp16 test. A non-empty list still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "that should be kept in float32: []." not in record.getMessage()


def cast_pipeline(pipe: Pipe, dtype: torch.dtype) -> None:
    """Cast every model of ``pipe`` to ``dtype``; a no-op when already there (the runner loads
    in the set's dtype, so this only does work on a pipeline built in another dtype)."""
    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(m.dtype != dtype for m in models):
        notice = _NoModuleKeptInFloat32()
        logger = logging.getLogger("diffusers.models.modeling_utils")
        logger.addFilter(notice)
        try:
            pipe.to(dtype=dtype, silence_dtype_warnings=True)
        finally:
            logger.removeFilter(notice)


@dataclass(frozen=True)
class CastWeights:
    """The apply function of a dtype technique: a value, so that equal entries compare equal."""

    dtype: torch.dtype

    def __call__(self, pipe: Pipe, ctx: ApplyContext) -> None:
        cast_pipeline(pipe, self.dtype)


def apply_layerwise_casting(pipe: Pipe, ctx: ApplyContext) -> None:
    if upcasts_vae(pipe):
        raise TechniqueError(
            "layerwise_casting cannot run in fp16 with this VAE: its config has force_upcast "
            "(SDXL's, as published), so the pipeline casts it to fp32 for every decode, and "
            "the casting hooks would still compute its layers in fp16 on fp32 inputs (a dtype "
            "error). Use bf16 or fp32, or a VAE with force_upcast off")
    # Only diffusers models have enable_layerwise_casting (with their own skip patterns for
    # precision-critical norms): the denoiser (UNet or transformer) and the VAE; the
    # transformers text encoders keep their dtype.
    for model in (denoiser(pipe), pipe.vae):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                       compute_dtype=model.dtype)


def apply_channels_last(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.unet.to(memory_format=torch.channels_last)


def upcasts_vae(pipe: Pipe) -> bool:
    """Whether the pipeline casts its fp16 VAE to fp32 for each decode: SDXL's pipeline does
    (``upcast_vae``) when the VAE's config has ``force_upcast``, as SDXL's published VAE has."""
    vae = pipe.vae
    return (hasattr(pipe, "upcast_vae") and vae.dtype == torch.float16
            and bool(getattr(vae.config, "force_upcast", False)))
