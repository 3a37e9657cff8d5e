"""Techniques that change how the VAE decodes: one image at a time, or in tiles."""

from __future__ import annotations

from pytest_sdmem.building.techniques.context import ApplyContext, Pipe


def apply_vae_slicing(pipe: Pipe, ctx: ApplyContext) -> None:
    # pipe.enable_vae_slicing() was removed in diffusers 0.40: the switch lives on the VAE.
    pipe.vae.enable_slicing()


def apply_vae_tiling(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.vae.enable_tiling()
