"""CUDA memory of a generation, estimated on a machine without a GPU.

The real diffusers pipeline runs on meta tensors (shapes and dtypes, no data, no arithmetic);
every storage it creates and frees is replayed through a model of PyTorch's CUDA caching
allocator, weights are placed the way the technique's offload mode places them, and
scaled-dot-product attention allocates what the CUDA kernel would. The result is what
``torch.cuda.max_memory_allocated`` would say for the call, with what is not modelled listed
beside it.

``estimate_generation`` makes an estimate; ``unsupported_reason`` says beforehand why a
technique set cannot be estimated (a test is then skipped with that reason, never estimated
wrongly).
"""

from pytest_sdmem.estimate.report import ESTIMATED_DEVICE, NOT_MODELLED, EstimateReport
from pytest_sdmem.estimate.run import (
    DEFAULT_MAX_STEPS,
    UnsupportedTechniqueError,
    estimate_generation,
    unsupported_reason,
)

__all__ = [
    "DEFAULT_MAX_STEPS",
    "ESTIMATED_DEVICE",
    "NOT_MODELLED",
    "EstimateReport",
    "UnsupportedTechniqueError",
    "estimate_generation",
    "unsupported_reason",
]
