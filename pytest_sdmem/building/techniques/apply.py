"""Switching a parsed set on: the guide's baseline first, then each entry's apply function in
its stage, with the pipeline moved to its device between configuring and wrapping."""

from __future__ import annotations

import torch

from pytest_sdmem.building.techniques.context import ApplyContext, Pipe
from pytest_sdmem.building.techniques.parse import TechniqueSet
from pytest_sdmem.building.techniques.registry import REGISTRY
from pytest_sdmem.building.techniques.technique import Stage
from pytest_sdmem.building.techniques.weights import cast_pipeline


def apply_techniques(pipe: Pipe, ts: TechniqueSet, ctx: ApplyContext) -> Pipe:
    """Switch ``ts`` on in ``pipe`` in canonical order and put the pipeline on ``ctx.device``.

    First the guide's baseline (fp32 unless the set has a dtype, classic attention unless it
    chooses one), then the ``CONFIGURE`` techniques, then placement: ``pipe.to(ctx.device)``
    unless an offload technique places the models itself, then the ``WRAP`` techniques, which
    must see the final weights and device.
    """
    if ts.dtype == torch.float32:
        cast_pipeline(pipe, torch.float32)
    if not any(t.sets_attention for t in ts.techniques):
        REGISTRY["none"].apply(pipe, ctx)
    for stage in Stage:
        if stage is Stage.WRAP and not any(t.stage is Stage.PLACE for t in ts.techniques):
            pipe.to(ctx.device, silence_dtype_warnings=True)
        for technique in ts.techniques:
            if technique.stage is stage:
                technique.apply(pipe, ctx)
    return pipe

