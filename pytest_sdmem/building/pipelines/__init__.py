"""Stable Diffusion pipelines for the tests: synthetic ones built offline, or real ones.

``tiny`` is a complete, seconds-cheap pipeline for CPU tests; ``sd15`` has the exact SD 1.5
architecture and parameter counts, so its memory and speed are the real model's. Both have
seeded random weights, are cached on disk and loaded with ``from_pretrained``.
"""

from pytest_sdmem.building.pipelines.quiet import quiet_backend_fallbacks

with quiet_backend_fallbacks():  # the pipeline's module imports transformers' image processors
    from diffusers import StableDiffusionPipeline  # noqa: F401

from pytest_sdmem.building.pipelines.build import build_pipeline
from pytest_sdmem.building.pipelines.cache import FORMAT_VERSION, cache_key, ensure_cached
from pytest_sdmem.building.pipelines.configs import (
    DEFAULT_PROMPT,
    SD15_PARAMETER_COUNTS,
    SD15_TILE_THRESHOLD,
    SYNTHETIC_MODELS,
    TINY_TILE_THRESHOLD,
    ModelSpec,
    get_spec,
    tile_threshold,
)
from pytest_sdmem.building.pipelines.errors import ModelError
from pytest_sdmem.building.pipelines.load import load_pipeline
from pytest_sdmem.building.pipelines.tokenizer import build_tokenizer

__all__ = [
    "DEFAULT_PROMPT",
    "FORMAT_VERSION",
    "SD15_PARAMETER_COUNTS",
    "SD15_TILE_THRESHOLD",
    "SYNTHETIC_MODELS",
    "TINY_TILE_THRESHOLD",
    "ModelError",
    "ModelSpec",
    "build_pipeline",
    "build_tokenizer",
    "cache_key",
    "ensure_cached",
    "get_spec",
    "load_pipeline",
    "tile_threshold",
]
