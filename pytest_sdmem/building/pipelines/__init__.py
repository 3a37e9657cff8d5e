"""Diffusion pipelines for the tests: synthetic ones built offline, or real ones.

The catalogue (``configs``) has the full-size models of each family (SD 1.5, SD 2.1, SDXL,
SD 3, Flux) with their exact architectures and parameter counts, so their memory and speed are
the real models', and a tiny variant of each family (``tiny``, ``tiny-sdxl``, ``tiny-sd3``,
``tiny-flux``): the same classes and code paths, seconds-cheap on a CPU. All have seeded random
weights, are cached on disk and loaded with ``from_pretrained``.
"""

from pytest_sdmem.building.pipelines.quiet import quiet_backend_fallbacks

with quiet_backend_fallbacks():  # the pipelines' modules import transformers' image processors
    from diffusers import (  # noqa: F401
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

from pytest_sdmem.building.pipelines.build import build_pipeline
from pytest_sdmem.building.pipelines.cache import FORMAT_VERSION, cache_key, ensure_cached
from pytest_sdmem.building.pipelines.configs import (
    DEFAULT_PROMPT,
    FAMILIES,
    PARAMETER_COUNTS,
    SD15_PARAMETER_COUNTS,
    SD15_TILE_THRESHOLD,
    SYNTHETIC_MODELS,
    TINY_MODELS,
    TINY_TILE_THRESHOLD,
    Component,
    Defaults,
    ModelSpec,
    get_spec,
    tile_threshold,
)
from pytest_sdmem.building.pipelines.errors import ModelError
from pytest_sdmem.building.pipelines.load import family_of, load_pipeline
from pytest_sdmem.building.pipelines.tokenizer import build_t5_tokenizer, build_tokenizer

__all__ = [
    "DEFAULT_PROMPT",
    "FAMILIES",
    "FORMAT_VERSION",
    "PARAMETER_COUNTS",
    "SD15_PARAMETER_COUNTS",
    "SD15_TILE_THRESHOLD",
    "SYNTHETIC_MODELS",
    "TINY_MODELS",
    "TINY_TILE_THRESHOLD",
    "Component",
    "Defaults",
    "ModelError",
    "ModelSpec",
    "build_pipeline",
    "build_t5_tokenizer",
    "build_tokenizer",
    "cache_key",
    "ensure_cached",
    "family_of",
    "get_spec",
    "load_pipeline",
    "tile_threshold",
]
