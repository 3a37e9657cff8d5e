"""2-d convolutions laid out as cuDNN lays them out, for code running on meta tensors.

On CUDA a convolution runs in the memory format ``cudnn_conv_suggest_memory_format`` picks:
channels-last when the input or the weight is channels-last, else contiguous. The input and the
weight are converted to that format first (``contiguous(memory_format)``: a copy when they are
not in it, alive during the call), and the output is allocated in it. The meta kernel instead
always returns a contiguous output and copies nothing, so with ``channels_last`` weights
(``pipe.unet.to(memory_format=torch.channels_last)``) the meta run would miss the input copies
and produce outputs whose downstream ``contiguous()``/``reshape`` calls differ from CUDA's.
:class:`CudaConvolution` gives ``F.conv2d`` on meta tensors cuDNN's layout, allocations included.
The bias is added in place, as ``_convolution`` does. cuDNN's workspace is not modelled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch.overrides import TorchFunctionMode


def cudnn_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout cuDNN runs a 2-d convolution in (``cudnn_conv_suggest_memory_format``, with
    ``Tensor.suggest_memory_format``'s stride rules)."""
    if input.dtype == torch.float64 or weight.dtype == torch.float64 or weight.dim() != 4:
        return torch.contiguous_format
    if torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


class CudaConvolution(TorchFunctionMode):
    """While active, ``F.conv2d`` on meta tensors allocates what cuDNN's path would."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            input = args[0] if args else kwargs.get("input")
            if input is not None and input.device.type == "meta":
                return _conv2d(func, *args, **kwargs)
        return func(*args, **kwargs)


def _conv2d(func: Any, input: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
    layout = cudnn_memory_format(input, weight)
    input = input.contiguous(memory_format=layout)
    weight = weight.contiguous(memory_format=layout)
    # The output's shape from an empty batch (which allocates nothing), then the output itself
    # in cuDNN's layout.
    shape = func(input[:0], weight, None, *args, **kwargs).shape
    out = torch.empty((input.shape[0], *shape[1:]), dtype=input.dtype, device=input.device,
                      memory_format=layout)
    if bias is not None:
        out.add_(bias.reshape(1, -1, 1, 1))
    return out
