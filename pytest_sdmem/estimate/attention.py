"""Scaled-dot-product attention as CUDA would run it, for code running on meta tensors.

On meta, ``F.scaled_dot_product_attention`` always takes the math path (``_fused_sdp_choice``
has no fused kernel for meta), which materialises the whole attention matrix: for SD 1.5 at
512x512 that is (2 x 8 heads) x 4096 x 4096 scores, half a gigabyte per tensor in fp16, that
CUDA's fused kernels never allocate. :class:`CudaAttention` intercepts the call, chooses the
kernel for the target card the way ``sdp::select_sdp_backend``
(aten/src/ATen/native/transformers/cuda/sdp_utils.cpp) does with the default backends
enabled, and allocates on meta what that kernel allocates on CUDA. The order is flash,
memory-efficient, math, with cuDNN first on sm90 (``check_prefer_cudnn_attention``: torch
builds with cuDNN newer than 9.15, assumed; flash allocates the same); the checks of
``can_use_*_attention`` are in :func:`choose_kernel`. What each allocates besides its inputs:

* cuDNN (fp16/bf16, sm80+, head dims multiples of 8 up to 128, masks allowed, the query laid
  out as batch x seq x heads x dim): the output like the query (``alloc_with_matching_layout``)
  and float32 softmax statistics (batch x heads x seq), counted even where inference skips
  them (``compute_logsumexp``): 64 KiB per 4096 queries and head, never at a peak;
* flash (fp16/bf16, sm80+, no mask, equal head dims up to 256): the output, laid out like the
  query (``empty_like`` of the query seen as batch x seq x heads x dim, so the usual
  ``transpose(1, 2).reshape`` afterwards is a view, not a copy), and the float32 log-sum-exp
  (batch x heads x seq), freed when the call returns; head dims not divisible by 8 are padded
  first, as copies;
* memory-efficient (fp16/fp32, and bf16 from sm80; head dims divisible by the GEMM alignment:
  8 for fp16/bf16, 4 for fp32 on sm80+, 1 below; no upper limit, so the VAE's single 512-wide
  head runs here): a boolean mask converted to an additive one, the mask padded to a multiple
  of 16 keys or made contiguous where the kernel needs it, a contiguous batch x seq x heads x
  dim output, a float32 output accumulator when fp16/bf16 head dims exceed 128 (the kernel
  variant without a single-pass value loop: batch x seq x 512 x 4 bytes for the VAE's
  attention), and the log-sum-exp only when autograd needs it;
* math: the real composite, which is what CUDA runs too (fp16/bf16 inputs are computed in
  float32: ``allow_fp16_bf16_reduction_math_sdp`` is off by default, so the attention matrix
  and its softmax are float32).

Flash's split-KV accumulators (only for calls with fewer query blocks than SMs, i.e. short
sequences, megabytes at most) are not modelled. Attention processors that do not call SDPA
(diffusers' classic ``AttnProcessor`` and the sliced processors of attention slicing) are
untouched: their real allocations are what CUDA does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pytest_sdmem.estimate.gpus import Gpu, gpu_for

CUDNN = "cudnn"
FLASH = "flash"
EFFICIENT = "efficient"
MATH = "math"

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_EFFICIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest head dim of the flash kernels.
_FLASH_MAX_HEAD_DIM = 256
#: Largest head dim of cuDNN attention (256 only with cuDNN > 9.22 on sm90, where flash
#: takes those calls anyway and allocates the same).
_CUDNN_MAX_HEAD_DIM = 128
#: Mask alignment (keys) of the memory-efficient kernel (``preprocess_mask``).
_MASK_ALIGNMENT = 16
#: The memory-efficient kernel keeps its log-sum-exp padded to this many queries.
_LSE_ALIGNMENT = 32
#: Head dims above this need the kernel variant with a float32 output accumulator.
_SINGLE_PASS_MAX_HEAD_DIM = 128


def prefers_cudnn(gpu: Gpu) -> bool:
    """Whether cuDNN attention comes first on ``gpu`` (``check_prefer_cudnn_attention``: sm90
    and sm100, given a cuDNN newer than 9.15: CUDA 13 wheels; with the older cuDNN of CUDA
    12.x wheels flash runs instead, which allocates the same)."""
    return gpu.capability[0] in (9, 10)


def choose_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                  enable_gqa: bool = False, gpu: Gpu | None = None) -> str:
    """The SDPA backend ``gpu`` (default: the default card) would run for these inputs:
    "cudnn", "flash", "efficient" or "math" (``select_sdp_backend``)."""
    gpu = gpu or gpu_for(None)
    tensors = (query, key, value)
    if any(t.dim() != 4 for t in tensors) or len({t.dtype for t in tensors}) != 1:
        return MATH
    if any(t.shape[2] == 0 or t.shape[0] != query.shape[0] for t in tensors):
        return MATH
    order = (CUDNN, FLASH, EFFICIENT) if prefers_cudnn(gpu) else (FLASH, EFFICIENT)
    checks = {CUDNN: _cudnn_ok, FLASH: _flash_ok, EFFICIENT: _efficient_ok}
    for kernel in order:
        if checks[kernel](query, key, value, attn_mask, is_causal, enable_gqa, gpu):
            return kernel
    return MATH


def _cudnn_ok(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: torch.Tensor | None, is_causal: bool, enable_gqa: bool,
              gpu: Gpu) -> bool:
    """``can_use_cudnn_attention``: dtypes, hardware, head dims, key length, layout."""
    if query.dtype not in _FLASH_DTYPES or not 80 <= gpu.sm <= 121:
        return False
    d_qk, d_v = query.shape[-1], value.shape[-1]
    if d_qk > _CUDNN_MAX_HEAD_DIM or d_v > _CUDNN_MAX_HEAD_DIM or d_qk % 8 or d_v % 8:
        return False
    if key.shape[2] == 1 or query.shape[1] % key.shape[1]:
        return False
    return all(_seq_major(t) for t in (query, key, value))  # check_cudnn_layout


def _seq_major(t: torch.Tensor) -> bool:
    """Batch x seq x heads x dim in memory (the layout diffusers' processors make)."""
    _, heads, seq, dim = t.shape
    return t.stride() == (seq * heads * dim, dim, heads * dim, 1)


def _flash_ok(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: torch.Tensor | None, is_causal: bool, enable_gqa: bool,
              gpu: Gpu) -> bool:
    """``can_use_flash_attention``."""
    heads_q, heads_k = query.shape[1], key.shape[1]
    return (query.dtype in _FLASH_DTYPES and 80 <= gpu.sm <= 121 and attn_mask is None
            and query.shape[-1] == key.shape[-1] == value.shape[-1] <= _FLASH_MAX_HEAD_DIM
            and not (is_causal and query.shape[2] != key.shape[2])
            and (heads_q == heads_k or (enable_gqa and heads_q % heads_k == 0))
            and all(t.stride(-1) == 1 or t.shape[-1] == 1 for t in (query, key, value)))


def _efficient_ok(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attn_mask: torch.Tensor | None, is_causal: bool, enable_gqa: bool,
                  gpu: Gpu) -> bool:
    """``can_use_mem_efficient_attention``: dtypes by card, the GEMM alignment of the head
    dims and (sm80+) of the storage offsets, equal heads, dense last dims."""
    dtypes = _EFFICIENT_DTYPES if gpu.sm >= 80 else (torch.float16, torch.float32)
    alignment = _gemm_alignment(query.dtype, gpu)
    d_qk, d_v = query.shape[-1], value.shape[-1]
    return (query.dtype in dtypes and 50 <= gpu.sm <= 121 and d_qk == key.shape[-1]
            and d_qk % alignment == 0 and d_v % alignment == 0
            and query.shape[1] == key.shape[1] == value.shape[1]
            and all(t.stride(-1) == 1 for t in (query, key, value))
            and (gpu.sm < 80 or all(t.storage_offset() % alignment == 0
                                     for t in (query, key, value))))


def _gemm_alignment(dtype: torch.dtype, gpu: Gpu) -> int:
    """``minimum_gemm_alignment``: 4 from sm80, at least 128 bits with tensor cores (fp16/bf16
    from sm70, everything from sm80)."""
    half = dtype in _FLASH_DTYPES
    alignment = 4 if gpu.sm >= 80 else 1
    if gpu.sm >= 80 or (gpu.sm >= 70 and half):
        alignment = max(alignment, 128 // (16 if half else 32))
    return alignment


class CudaAttention(TorchFunctionMode):
    """While active, meta SDPA calls allocate what the CUDA kernel of ``gpu`` (default: the
    default card) would; ``kernels`` counts the calls per kernel. Calls on other devices are
    left alone."""

    def __init__(self, gpu: Gpu | None = None) -> None:
        super().__init__()
        self.gpu = gpu or gpu_for(None)
        self.kernels: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs.get("query")
            if query is not None and query.device.type == "meta":
                return _sdpa(self.gpu, self.kernels, func, *args, **kwargs)
        return func(*args, **kwargs)


def _sdpa(gpu: Gpu, kernels: Counter[str], func: Any, query: torch.Tensor, key: torch.Tensor,
          value: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
          is_causal: bool = False, scale: float | None = None,
          enable_gqa: bool = False) -> torch.Tensor:
    kernel = choose_kernel(query, key, value, attn_mask, is_causal, enable_gqa, gpu)
    kernels[kernel] += 1
    if kernel in (FLASH, CUDNN):  # cuDNN: the same output and statistics, no padding needed
        return _flash(query, key, value)
    if kernel == EFFICIENT:
        return _efficient(query, key, value, attn_mask)
    return func(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``_scaled_dot_product_flash_attention``: pad, output like the query, log-sum-exp."""
    head_dim = query.shape[-1]
    pad = -head_dim % 8
    if pad:  # pad_last_dim<8>: padded copies, alive until the kernel returns
        query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
    out = torch.empty_like(query.transpose(1, 2))
    lse = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
    del lse, key, value
    out = out.transpose(1, 2)
    return out[..., :head_dim] if pad else out


def _efficient(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_mask: torch.Tensor | None) -> torch.Tensor:
    """``_scaled_dot_product_efficient_attention``: mask preparation, output, accumulator."""
    batch, heads, seq_q, _ = query.shape
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # convert_boolean_attn_mask
            zero = torch.scalar_tensor(0.0, dtype=query.dtype, device=attn_mask.device)
            attn_mask = torch.where(attn_mask.logical_not(), float("-inf"), zero)
            del zero
        mask = attn_mask.expand(batch, heads, seq_q, key.shape[2])
        if mask.shape[-1] % _MASK_ALIGNMENT:
            mask = F.pad(mask, (0, _MASK_ALIGNMENT - mask.shape[-1] % _MASK_ALIGNMENT))
        elif any(mask.stride(i) % _MASK_ALIGNMENT for i in range(3)):
            mask = mask.contiguous()
    d_v = value.shape[-1]
    out = torch.empty((batch, seq_q, heads, d_v), dtype=query.dtype, device=query.device)
    needs_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    lse_len = -(-seq_q // _LSE_ALIGNMENT) * _LSE_ALIGNMENT if needs_lse else 0
    lse = torch.empty((batch, heads, lse_len), dtype=torch.float32, device=query.device)
    if query.dtype != torch.float32 and max(query.shape[-1], d_v) > _SINGLE_PASS_MAX_HEAD_DIM:
        accumulator = torch.empty(out.shape, dtype=torch.float32, device=query.device)
        del accumulator
    del lse, mask
    return out.transpose(1, 2)
