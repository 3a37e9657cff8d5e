"""Attention as CUDA would allocate it, on meta tensors: the SDPA kernels and one attention
block of diffusers under each processor, to the byte. Sizes in the comments are bytes; all
are multiples of 512 and at most 1 MiB, so each is exactly one small-pool block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)

from pytest_sdmem.estimate.attention import (
    CUDNN,
    EFFICIENT,
    FLASH,
    MATH,
    CudaAttention,
    choose_kernel,
)
from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.gpus import gpu_for


def _qkv(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(shape, dtype=dtype, device="meta") for _ in range(3))


def test_kernel_choice_follows_the_cuda_rules() -> None:
    half = _qkv((2, 8, 4096, 40), torch.float16)
    assert choose_kernel(*half) == FLASH
    assert choose_kernel(*_qkv((2, 8, 4096, 40), torch.bfloat16)) == FLASH
    assert choose_kernel(*_qkv((2, 8, 4096, 40), torch.float32)) == EFFICIENT  # no fp32 flash
    assert choose_kernel(*_qkv((1, 1, 4096, 512), torch.float16)) == EFFICIENT  # dim > 256
    mask = torch.empty(2, 1, 4096, 4096, device="meta", dtype=torch.float16)
    assert choose_kernel(*half, attn_mask=mask) == EFFICIENT  # flash takes no mask
    assert choose_kernel(*_qkv((2, 8, 64, 6), torch.float32)) == MATH  # 6 % 4 != 0
    q, k, v = _qkv((2, 8, 64, 40), torch.float16)
    assert choose_kernel(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), v) == MATH
    assert choose_kernel(q[0], k[0], v[0]) == MATH  # 3-d inputs


def _diffusers_qkv(batch: int, heads: int, seq: int, dim: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Q, K, V as diffusers' processors make them: (B, L, H*D) viewed as (B, H, L, D)."""
    return tuple(torch.empty(batch, seq, heads * dim, dtype=dtype, device="meta")
                 .view(batch, seq, heads, dim).transpose(1, 2) for _ in range(3))


F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
A100, H100, L4 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA L4"
V100, T4 = "Tesla V100-SXM2-16GB", "Tesla T4"


@pytest.mark.parametrize(("card", "dtype", "heads", "dim", "mask", "kernel"), [
    # SD 1.5's UNet (head dims 40, 80, 160): flash on sm80/sm89, cuDNN first on sm90 up to
    # head dim 128, where flash takes over; fp32 has no flash or cuDNN kernel.
    (A100, F16, 8, 40, False, FLASH), (A100, BF16, 8, 160, False, FLASH),
    (L4, F16, 8, 80, False, FLASH),
    (H100, F16, 8, 40, False, CUDNN), (H100, BF16, 8, 80, False, CUDNN),
    (H100, F16, 8, 160, False, FLASH),
    (A100, F32, 8, 40, False, EFFICIENT), (H100, F32, 8, 160, False, EFFICIENT),
    # The VAE's single 512-wide head: above flash's 256 and cuDNN's 128, the memory-efficient
    # kernel has no limit.
    (A100, F16, 1, 512, False, EFFICIENT), (H100, BF16, 1, 512, False, EFFICIENT),
    (A100, F32, 1, 512, False, EFFICIENT),
    # A mask rules flash out, not cuDNN.
    (A100, F16, 8, 40, True, EFFICIENT), (H100, F16, 8, 40, True, CUDNN),
    # Before sm80: no flash or cuDNN; the memory-efficient kernel takes fp16 and fp32, not bf16.
    (V100, F16, 8, 40, False, EFFICIENT), (T4, F32, 8, 40, False, EFFICIENT),
    (T4, BF16, 8, 40, False, MATH), (V100, F16, 1, 512, False, EFFICIENT),
    # GEMM alignment of the head dim: 8 for fp16 (tensor cores), for fp32 4 on sm80, 1 before.
    (A100, F16, 2, 12, True, MATH), (A100, F32, 2, 6, True, MATH), (V100, F32, 2, 6, True,
                                                                      EFFICIENT),
])
def test_backend_choice_table(card: str, dtype: torch.dtype, heads: int, dim: int, mask: bool,
                              kernel: str) -> None:
    q, k, v = _diffusers_qkv(2, heads, 4096 if dim >= 40 else 64, dim, dtype)
    attn_mask = torch.empty(2, 1, q.shape[2], k.shape[2], dtype=dtype, device="meta")
    assert choose_kernel(q, k, v, attn_mask if mask else None, gpu=gpu_for(card)) == kernel


def test_cudnn_needs_the_sequence_major_layout_and_allocates_like_flash() -> None:
    h100 = gpu_for(H100)
    q, k, v = _qkv((2, 8, 256, 32), torch.float16)  # heads-major: cuDNN's layout check fails
    assert choose_kernel(q, k, v, gpu=h100) == FLASH
    with SimulatedDevice() as device, CudaAttention(h100) as attention, torch.no_grad():
        q, k, v = _diffusers_qkv(2, 8, 256, 32, torch.float16)
        inputs = 3 * 2 * 256 * 256 * 2
        out = F.scaled_dot_product_attention(q, k, v)
        # Output 262,144 and float32 statistics 2*8*256*4 = 16,384, freed at return.
        assert device.allocator.peak_allocated == inputs + 262_144 + 16_384
        assert out.stride() == q.stride()
    assert dict(attention.kernels) == {CUDNN: 1}


def test_flash_allocates_output_like_the_query_and_a_transient_log_sum_exp() -> None:
    with SimulatedDevice() as device, CudaAttention() as attention, torch.no_grad():
        # A query as attention processors make it: (B, L, H*D) viewed as (B, H, L, D).
        q, k, v = (torch.empty(2, 256, 8 * 32, dtype=torch.float16, device="meta")
                   .view(2, 256, 8, 32).transpose(1, 2) for _ in range(3))
        inputs = 3 * 2 * 256 * 256 * 2  # 3 x 262,144
        out = F.scaled_dot_product_attention(q, k, v)
        # Output 262,144 and the float32 log-sum-exp 2*8*256*4 = 16,384, freed at return.
        assert device.allocator.peak_allocated == inputs + 262_144 + 16_384
        assert device.allocated == inputs + 262_144
        assert out.stride() == q.stride()  # so transpose(1, 2).reshape(...) is a view
        assert out.transpose(1, 2).reshape(2, 256, 256).data_ptr() == out.data_ptr()
    assert dict(attention.kernels) == {FLASH: 1}


def test_flash_pads_head_dims_not_divisible_by_8() -> None:
    with SimulatedDevice() as device, CudaAttention(), torch.no_grad():
        q, k, v = _qkv((1, 2, 128, 36), torch.float16)  # 18,432 each
        out = F.scaled_dot_product_attention(q, k, v)
        # Padded copies to 40: 3 x 20,480; output 20,480; log-sum-exp 1*2*128*4 = 1024.
        assert device.allocator.peak_allocated == 3 * 18_432 + 4 * 20_480 + 1024
        assert out.shape == (1, 2, 128, 36)
        assert device.allocated == 3 * 18_432 + 20_480


def test_memory_efficient_kernel_output_accumulator_and_mask_padding() -> None:
    with SimulatedDevice() as device, CudaAttention() as attention, torch.no_grad():
        q, k, v = _qkv((1, 1, 1024, 512), torch.float16)  # 1 MiB each, the largest small size
        base = device.allocated
        F.scaled_dot_product_attention(q, k, v)
        # The fp16 output (1 MiB) and, for head dims above 128, a float32 accumulator of 2 MiB,
        # split from a 20 MiB large-pool segment (far more than 1 MiB remains).
        assert device.allocator.peak_allocated == base + 2**20 + 2**21
        q, k, v = _qkv((1, 2, 64, 32), torch.float32)  # 16,384 each
        mask = torch.ones(64, 77, dtype=torch.bool, device="meta")  # 4,928 -> 5,120
        device.reset_peak()
        base = device.allocated
        F.scaled_dot_product_attention(q, k[:, :, :1].expand(1, 2, 77, 32).contiguous(),
                                       v[:, :, :1].expand(1, 2, 77, 32).contiguous(),
                                       attn_mask=mask)
        # k and v: 1*2*77*32*4 = 19,712 -> 19,968 each. The boolean mask becomes an additive
        # float mask, 64*77*4 = 19,712 -> 19,968 (its temporaries, logical_not 5,120 and a 0-d
        # zero 512, are gone before what follows), which is expanded to (1, 2, 64, 77) and
        # padded to 80 keys: 1*2*64*80*4 = 40,960; then the output, 16,384. No log-sum-exp
        # without autograd.
        assert device.allocator.peak_allocated == (base + 2 * 19_968 + 19_968 + 40_960
                                                   + 16_384)
    assert dict(attention.kernels) == {EFFICIENT: 2}


def test_the_math_fallback_is_the_real_composite() -> None:
    q, k, v = _qkv((1, 2, 64, 6), torch.float32)
    peaks = []
    for mode in (CudaAttention, None):
        with SimulatedDevice() as device, torch.no_grad():
            device.place([q, k, v])
            if mode is None:
                F.scaled_dot_product_attention(q, k, v)
            else:
                with mode():
                    F.scaled_dot_product_attention(q, k, v)
            peaks.append(device.allocator.peak_allocated)
    # The materialised 2 x 64 x 64 float32 scores (32,768) are in both.
    assert peaks[0] == peaks[1] > 3 * 3_072 + 32_768


# One attention block (diffusers' Attention, self-attention) with 2 heads of 32 over 256
# tokens in float16. Weights: to_q, to_k, to_v and to_out.0, 64 x 64 x 2 = 8,192 each, plus
# to_out.0's bias 128 -> 512: 33,280. Every (1, 256, 64) activation is 32,768.
WEIGHTS = 4 * 8_192 + 512
ACT = 32_768


def _block_peak(processor: object) -> int:
    attn = Attention(query_dim=64, heads=2, dim_head=32).to(device="meta", dtype=torch.float16)
    attn.set_processor(processor)
    with SimulatedDevice() as device, CudaAttention(), torch.no_grad():
        device.place(attn.parameters())
        x = torch.empty(1, 256, 64, dtype=torch.float16, device="meta")
        out = attn(x)
        assert out.shape == x.shape
        return device.allocator.peak_allocated


def test_classic_processor_materialises_the_attention_matrix() -> None:
    # x, and q, k, v reshaped to (heads, tokens, dim): 4 activations alive; get_attention_scores
    # holds its empty baddbmm input (2 x 256 x 256 x 2 = 262,144) and the scores (262,144)
    # at once, then the scores and the softmax (the same two sizes).
    assert _block_peak(AttnProcessor()) == WEIGHTS + 4 * ACT + 2 * 262_144


def test_sliced_processor_holds_one_head_of_scores_at_a_time() -> None:
    # x, q, k, v and the zero-filled result (5 activations); in the second slice the previous
    # slice's output (1 x 256 x 32 x 2 = 16,384) is still alive while that slice's baddbmm
    # input and scores (1 x 256 x 256 x 2 = 131,072 each) exist.
    assert _block_peak(SlicedAttnProcessor(1)) == WEIGHTS + 5 * ACT + 16_384 + 2 * 131_072


def test_sdpa_processor_allocates_no_attention_matrix() -> None:
    # Flash: the output comes laid out like the query, so reshaping it back is a view. The
    # peak is at to_out: x, q, k, v, the attention output and the projection (6 activations);
    # the kernel itself had 5 plus a 2 KB log-sum-exp.
    assert _block_peak(AttnProcessor2_0()) == WEIGHTS + 6 * ACT


@pytest.mark.parametrize("processor", [AttnProcessor(), AttnProcessor2_0()])
def test_attention_mode_leaves_other_devices_alone(processor: object) -> None:
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    attn.set_processor(processor)
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        expected = attn(x)
        with CudaAttention() as attention:
            assert torch.equal(attn(x), expected)
    assert sum(attention.kernels.values()) == 0
