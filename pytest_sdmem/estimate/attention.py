"""Scaled-dot-product attention as CUDA would run it, for code running on meta tensors.

On meta, ``F.scaled_dot_product_attention`` always takes the math path (``_fused_sdp_choice``
has no fused kernel for meta), which materialises the whole attention matrix: for SD 1.5 at
512x512 that is (2 x 8 heads) x 4096 x 4096 scores, half a gigabyte per tensor in fp16, that
CUDA's fused kernels never allocate. :class:`CudaAttention` intercepts the call, chooses the
kernel the way ``sdp::select_sdp_backend`` does on an sm80+ GPU (A100, H100) with the default
backends enabled (flash, then memory-efficient, then math), and allocates on meta what that
kernel allocates on CUDA:

* flash (fp16/bf16, no mask, equal head dims up to 256): the output, laid out like the query
  (``empty_like`` of the query seen as batch x seq x heads x dim, so the usual
  ``transpose(1, 2).reshape`` afterwards is a view, not a copy), and the float32 log-sum-exp
  (batch x heads x seq), freed when the call returns; head dims not divisible by 8 are padded
  first, as copies;
* memory-efficient (fp16/bf16/fp32, head dims divisible by 8, or 4 for fp32, masks allowed):
  a boolean mask converted to an additive one, the mask padded to a multiple of 16 keys or made
  contiguous where the kernel needs it, a contiguous batch x seq x heads x dim output, a float32
  output accumulator when fp16/bf16 head dims exceed 128 (the kernel variant without a
  single-pass value loop), and the log-sum-exp only when autograd needs it;
* math: the real composite, which is what CUDA runs too.

cuDNN attention, which some torch builds prefer on some GPUs, allocates the same output and no
statistics at inference, so counting it as flash differs by the log-sum-exp only. Attention
processors that do not call SDPA (diffusers' classic ``AttnProcessor`` and the sliced
processors of attention slicing) are untouched: their real allocations are what CUDA does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

FLASH = "flash"
EFFICIENT = "efficient"
MATH = "math"

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_EFFICIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest head dim of the flash kernels.
_FLASH_MAX_HEAD_DIM = 256
#: Mask alignment (keys) of the memory-efficient kernel (``preprocess_mask``).
_MASK_ALIGNMENT = 16
#: The memory-efficient kernel keeps its log-sum-exp padded to this many queries.
_LSE_ALIGNMENT = 32
#: Head dims above this need the kernel variant with a float32 output accumulator.
_SINGLE_PASS_MAX_HEAD_DIM = 128


def choose_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                  enable_gqa: bool = False) -> str:
    """The SDPA backend an sm80+ GPU would run for these inputs: "flash", "efficient" or
    "math" (the checks of ``can_use_flash_attention``/``can_use_mem_efficient_attention``)."""
    tensors = (query, key, value)
    if any(t.dim() != 4 for t in tensors) or len({t.dtype for t in tensors}) != 1:
        return MATH
    if any(t.shape[2] == 0 or t.shape[0] != query.shape[0] for t in tensors):
        return MATH
    d_qk, d_v = query.shape[-1], value.shape[-1]
    heads_q, heads_k = query.shape[1], key.shape[1]
    if (query.dtype in _FLASH_DTYPES and attn_mask is None
            and d_qk == key.shape[-1] == d_v <= _FLASH_MAX_HEAD_DIM
            and not (is_causal and query.shape[2] != key.shape[2])
            and (heads_q == heads_k or (enable_gqa and heads_q % heads_k == 0))
            and all(t.stride(-1) == 1 or t.shape[-1] == 1 for t in tensors)):
        return FLASH
    alignment = 4 if query.dtype == torch.float32 else 8
    if (query.dtype in _EFFICIENT_DTYPES and d_qk == key.shape[-1]
            and d_qk % alignment == 0 and d_v % alignment == 0
            and heads_q == heads_k == value.shape[1]
            and all(t.stride(-1) == 1 for t in tensors)):
        return EFFICIENT
    return MATH


class CudaAttention(TorchFunctionMode):
    """While active, meta SDPA calls allocate what the CUDA kernel would; ``kernels`` counts
    the calls per kernel. Calls on other devices are left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs.get("query")
            if query is not None and query.device.type == "meta":
                return _sdpa(self.kernels, func, *args, **kwargs)
        return func(*args, **kwargs)


def _sdpa(kernels: Counter[str], func: Any, query: torch.Tensor, key: torch.Tensor,
          value: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
          is_causal: bool = False, scale: float | None = None,
          enable_gqa: bool = False) -> torch.Tensor:
    kernel = choose_kernel(query, key, value, attn_mask, is_causal, enable_gqa)
    kernels[kernel] += 1
    if kernel == FLASH:
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
