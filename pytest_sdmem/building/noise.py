"""The same noise for every dtype: ``torch.randn`` draws in float32 and casts, while active.

A technique is checked against its baseline by generating both from one seed and comparing the
images, which only means something if both start from the same noise. diffusers draws the
initial latents (and an ancestral scheduler's per-step noise) with ``randn_tensor(...,
dtype=<the pipeline's dtype>)``, and torch's generators do not give the same numbers in half
precision as in float32: on the CPU, torch 2.5 differs for any tensor of 16 elements or more,
torch 2.13 for those of 16 or more that are not a multiple of 16. An fp16 pipeline then draws other
noise than its fp32 baseline, and the images differ by far more than precision (a mean of 0.17
on the tiny model with torch 2.5, against 0.0006 from the same noise).

:func:`float32_noise` replaces ``torch.randn`` (which ``randn_tensor`` calls by attribute) with
one that draws float16 and bfloat16 requests in float32 from the same generator and casts the
result: the numbers of the float32 draw, rounded. Other dtypes pass through unchanged. The
float32 draw is a transient latent-sized tensor (64 KiB for SD 1.5 at 512x512), at the start
of a generation, far from any peak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_HALF = (torch.float16, torch.bfloat16)
_RANDN = torch.randn
_LOCK = threading.Lock()
_DEPTH = 0


def _randn(*args: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> torch.Tensor:
    if dtype in _HALF and "out" not in kwargs:
        return _RANDN(*args, dtype=torch.float32, **kwargs).to(dtype)
    return _RANDN(*args, dtype=dtype, **kwargs)


@contextmanager
def float32_noise() -> Iterator[None]:
    """While active (in any thread; nested and concurrent uses share one replacement),
    ``torch.randn`` in float16 or bfloat16 draws in float32 and casts."""
    global _DEPTH
    with _LOCK:
        if _DEPTH == 0:
            torch.randn = _randn
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                torch.randn = _RANDN
