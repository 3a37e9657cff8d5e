"""Techniques that choose how attention is computed: the classic processor of the guide's
baseline, PyTorch SDPA, xFormers and attention slicing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.building.techniques.context import ApplyContext, Pipe


def apply_classic_attention(pipe: Pipe, ctx: ApplyContext) -> None:
    # AttnProcessor computes softmax(QK^T)V with the full attention matrix, as diffusers did
    # before PyTorch 2: the guide's "original" row, and the processor diffusers' own memory tests
    # measure attention slicing against (set_default_attn_processor). The transformers of SD 3
    # and Flux keep their own processors (joint attention, rotary embeddings), which have no
    # classic or plain-SDPA form: the choice applies to a UNet and the VAE.
    for model in _attention_models(pipe):
        model.set_default_attn_processor()


def _attention_models(pipe: Pipe) -> list[Any]:
    """The models whose attention processor the attention techniques choose: the UNet, if
    the pipeline has one, and the VAE."""
    unet = getattr(pipe, "unet", None)
    return [pipe.vae] if unet is None else [unet, pipe.vae]


def apply_sdpa(pipe: Pipe, ctx: ApplyContext) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in _attention_models(pipe):
        model.set_attn_processor(AttnProcessor2_0())


def apply_xformers(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_xformers_memory_efficient_attention()


def parse_slice_size(text: str) -> str | int:
    """The canonical slice size of ``attention_slicing(text)``; ValueError when it is none."""
    if text in ("auto", "max"):
        # diffusers' "max" is a slice of one head in every layer: the same as 1.
        return 1 if text == "max" else text
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise ValueError(text)
    return int(text)


SLICE_ACCEPTED = ("'auto' (the default: half the heads), 'max' (= 1) or a positive whole "
                  "number of heads per slice, e.g. attention_slicing(1)")


@dataclass(frozen=True)
class SliceAttention:
    """The apply function of ``attention_slicing(slice_size)``: a value, so that equal
    arguments give equal techniques."""

    slice_size: str | int

    def __call__(self, pipe: Pipe, ctx: ApplyContext) -> None:
        """Slice the attention; a slice larger than a layer's heads is refused here, against
        the model, where the parser cannot know its head counts (diffusers would raise a bare
        ValueError from deep inside ``set_attention_slice``)."""
        heads = [m.sliceable_head_dim for m in pipe.unet.modules()
                 if isinstance(getattr(m, "sliceable_head_dim", None), int)]
        if isinstance(self.slice_size, int) and heads and self.slice_size > min(heads):
            fewest, most = min(heads), max(heads)
            counts = f"{fewest}" if fewest == most else f"{fewest} to {most}"
            raise TechniqueError(
                f"invalid argument {self.slice_size} of attention_slicing for this model: its "
                f"attention layers have {counts} heads, so a slice holds 1 to {fewest} of "
                f"them; expected {SLICE_ACCEPTED}"
            )
        pipe.enable_attention_slicing(self.slice_size)
