"""Techniques that decide where the models live: accelerate's model and sequential CPU
offload, and diffusers' group offload. Each places the models itself, so the pipeline is never
moved to the device before them (``Stage.PLACE``)."""

from __future__ import annotations

import torch

from pytest_sdmem.building.techniques.context import ApplyContext, Pipe


def apply_sequential_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_sequential_cpu_offload(device=ctx.device)


def apply_model_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_model_cpu_offload(device=ctx.device)


def apply_group_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    onload = torch.device(ctx.device)
    pipe.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"),
                              offload_type="leaf_level", use_stream=onload.type == "cuda")
