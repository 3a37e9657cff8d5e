"""The memory/speed techniques of the diffusers memory guide, one registry entry each.

A test names its technique as an expression such as ``"fp16+vae_slicing"``; :func:`parse_technique`
turns it into a :class:`TechniqueSet` (strictly: an unknown name, a duplicate or a combination that
cannot work is an error at collection, never a silently different pipeline), and
:func:`apply_techniques` switches the set on in a fixed order, the way diffusers 0.42 wants it.

Every set starts from the guide's "original": fp32 weights (unless ``fp16``/``bf16``) and the
classic attention processor that materialises the whole attention matrix (unless ``sdpa`` or
``xformers`` chooses another). Today's diffusers defaults to PyTorch SDPA, so without that
baseline step ``none`` would already contain the memory-efficient attention whose gain the
guide's table measures, and ``fp16`` would not be comparable with ``none``.

One room a job, each importing only the rooms below it (the ``techniques`` contract in
pyproject.toml):

- ``apply`` switches a set on; ``requirements`` says what it misses on this machine, and which
  of its techniques the model's family refuses (each entry's ``families``);
- ``parse`` turns an expression into a :class:`TechniqueSet`;
- ``registry`` holds the entries and presets: adding a technique is adding one entry;
- ``weights``, ``attention``, ``vae``, ``offload``, ``compile`` hold the apply functions,
  grouped by what they change (``compile`` also holds the traced UNet);
- ``technique`` says what an entry is; ``context`` what an apply function is given.
"""

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.building.techniques.apply import apply_techniques
from pytest_sdmem.building.techniques.compile import (
    TracedUNet,
    example_unet_inputs,
    triton_build_problem,
)
from pytest_sdmem.building.techniques.context import Apply, ApplyContext, Pipe, denoiser
from pytest_sdmem.building.techniques.parse import TechniqueSet, parse_technique
from pytest_sdmem.building.techniques.registry import PRESETS, REGISTRY, Preset
from pytest_sdmem.building.techniques.requirements import family_refusals, unmet_requirements
from pytest_sdmem.building.techniques.technique import (
    ALL_FAMILIES,
    BFLOAT,
    ESTIMATED,
    FAMILIES,
    FP8_STORAGE,
    HALF,
    NOT_ESTIMATED,
    REORDERED,
    SAME_MATH,
    TILED,
    Conflict,
    Estimation,
    Families,
    OutputTolerance,
    Parameter,
    Stage,
    Technique,
)
from pytest_sdmem.building.techniques.weights import cast_pipeline

__all__ = [
    "ALL_FAMILIES",
    "BFLOAT",
    "ESTIMATED",
    "FAMILIES",
    "FP8_STORAGE",
    "HALF",
    "NOT_ESTIMATED",
    "PRESETS",
    "REGISTRY",
    "REORDERED",
    "SAME_MATH",
    "TILED",
    "Apply",
    "ApplyContext",
    "Conflict",
    "Estimation",
    "Families",
    "OutputTolerance",
    "Parameter",
    "Pipe",
    "Preset",
    "Stage",
    "Technique",
    "TechniqueError",
    "TechniqueSet",
    "TracedUNet",
    "apply_techniques",
    "cast_pipeline",
    "denoiser",
    "example_unet_inputs",
    "family_refusals",
    "parse_technique",
    "triton_build_problem",
    "unmet_requirements",
]
