"""Techniques that decide where the models live: accelerate's model and sequential CPU
offload, and diffusers' group offload. Each places the models itself, so the pipeline is never
moved to the device before them (``Stage.PLACE``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_sdmem.building.techniques.context import ApplyContext, Pipe


def apply_sequential_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_sequential_cpu_offload(device=ctx.device)


def apply_model_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_model_cpu_offload(device=ctx.device)


@dataclass(frozen=True)
class OffloadGroups:
    """The apply function of leaf-level group offloading, with the next layer prefetched on a
    CUDA stream (``use_stream``) or each layer brought over when it is called: a value, so that
    equal entries compare equal."""

    use_stream: bool

    def __call__(self, pipe: Pipe, ctx: ApplyContext) -> None:
        onload = torch.device(ctx.device)
        pipe.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"),
                                  offload_type="leaf_level",
                                  use_stream=self.use_stream and onload.type == "cuda")
