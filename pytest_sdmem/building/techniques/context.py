"""What every apply function is given: the pipeline and the generation it is set up for.

The bottom room of the package: the apply modules, the entries and the parser all type against
it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    Pipe = StableDiffusionPipeline
else:
    Pipe = Any


@dataclass(frozen=True)
class ApplyContext:
    """What a technique may need to know about the generation it is set up for.

    ``jit_trace`` traces the UNet with inputs of exactly these shapes (batch doubled when
    ``guidance_scale > 1``, as the pipeline then runs the unconditional batch alongside), and
    ``compile`` warms up on them, so that compiling is not part of the first measured call;
    ``steps`` gives them the schedule's timesteps, ``max_sequence_length`` the T5 prompt length
    of the families with a T5 encoder (None for the others).
    """

    device: str = "cpu"
    height: int = 512
    width: int = 512
    batch_size: int = 1
    steps: int = 50
    guidance_scale: float = 7.5
    max_sequence_length: int | None = None


Apply = Callable[[Pipe, ApplyContext], None]


def is_cuda(device: str) -> bool:
    """Whether ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``) names a CUDA device."""
    return device.split(":")[0] == "cuda"



def denoiser(pipe: Pipe) -> Any:
    """The pipeline's denoising model: the UNet of SD 1.x, 2.x and SDXL, the transformer of
    SD 3 and Flux."""
    unet = getattr(pipe, "unet", None)
    return pipe.transformer if unet is None else unet
