"""building/noise.py: inside ``float32_noise`` a half-precision draw is the float32 draw of the
same generator, rounded; outside, ``torch.randn`` is torch's own again."""

from __future__ import annotations

import threading

import pytest
import torch

from pytest_sdmem.building.noise import float32_noise

TORCH_RANDN = torch.randn


def draw(dtype: torch.dtype, n: int = 100) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_draw_is_the_float32_draw_rounded(dtype: torch.dtype) -> None:
    with float32_noise():
        assert torch.equal(draw(dtype), draw(torch.float32).to(dtype))
        assert draw(dtype).dtype == dtype
    # torch's own half draw of 100 numbers is other numbers (torch 2.5 and 2.13 alike): what
    # made an fp16 pipeline start from other noise than its fp32 baseline.
    assert not torch.equal(draw(dtype), draw(torch.float32).to(dtype))


def test_other_dtypes_and_out_pass_through() -> None:
    with float32_noise():
        assert torch.equal(draw(torch.float32), TORCH_RANDN(
            100, generator=torch.Generator().manual_seed(0)))
        assert draw(torch.float64).dtype == torch.float64
        out = torch.empty(8, dtype=torch.float16)
        torch.randn(8, out=out, dtype=torch.float16)  # torch's own: out= keeps its dtype


def test_torch_randn_is_restored_after_errors_nesting_and_threads() -> None:
    with pytest.raises(RuntimeError), float32_noise():
        raise RuntimeError("a failed generation")
    assert torch.randn is TORCH_RANDN
    with float32_noise():
        with float32_noise():
            pass
        assert torch.randn is not TORCH_RANDN  # the outer one is still active
    assert torch.randn is TORCH_RANDN
    inside = threading.Barrier(4)

    def generation() -> None:
        with float32_noise():
            inside.wait(timeout=10)
            draw(torch.float16)

    threads = [threading.Thread(target=generation) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.randn is TORCH_RANDN
