"""2-d convolutions laid out as cuDNN lays them out, for code running on meta tensors.

On CUDA a convolution runs in the memory format ``cudnn_conv_suggest_memory_format`` picks:
channels-last when the input or the weight is channels-last, else contiguous. The input and the
weight are converted to that format first (``contiguous(memory_format)``: a copy when they are
not in it, alive during the call), and the output is allocated in it. The meta kernel instead
always returns a contiguous output and copies nothing, so with ``channels_last`` weights
(``pipe.unet.to(memory_format=torch.channels_last)``) the meta run would miss the input copies
and produce outputs whose downstream ``contiguous()``/``reshape`` calls differ from CUDA's.
:class:`CudaConvolution` gives ``F.conv2d`` on meta tensors cuDNN's layout, allocations included.
The bias is added in place, as ``_convolution`` does.

cuDNN's workspace (aten/src/ATen/native/cudnn/Conv_v8.cpp, ``run_conv_plan``) is allocated
through the caching allocator for the duration of the call, so it is inside
``max_memory_allocated`` whenever a convolution is the peak. With ``cudnn.benchmark`` off (the
default, and what diffusers and this plugin leave it at), the plan is the first of cuDNN's
heuristics that runs (``get_configs_from_heuristics`` -> ``try_configs``), with whatever
workspace that engine asks for: there is no limit below the free memory. Which engine that is
is decided inside cuDNN and cannot be read from torch's sources; the model
(:func:`cudnn_workspace`) takes the engines that tensor-core convolutions in NCHW use, which
transpose the input and the output to NHWC in the workspace (the ``nchwToNhwcKernel`` /
``nhwcToNchwKernel`` around the ``..._nhwckrsc_...`` implicit-GEMM kernels in profiles of such
convolutions), and the weight to KRSC: the workspace is the bytes of input, weight and output.
That is the largest of the usual heuristic choices (implicit GEMM proper needs almost none),
chosen because an estimate below the truth is the dangerous direction. bf16 gets a float32
copy of the output on top (the engines' accumulator type): measured SD 1.5 peaks are further
above the estimate without workspaces in bf16 than in fp16 of the same sizes, and the
convolution engine is the only bf16-specific choice at the VAE decoder's peak
(docs/estimate-evidence.md). Channels-last
convolutions need no transposes; convolutions off tensor cores (fp32 without TF32, fp16 before
sm70, bf16 before sm80) are counted without a workspace. With ``cudnn.benchmark`` on, cuDNN
times every candidate with the largest workspace among those that fit in the free memory
(``get_available_workspace``): that peak depends on the card's free memory and is not
modelled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch.overrides import TorchFunctionMode

from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.gpus import Gpu, gpu_for


def cudnn_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout cuDNN runs a 2-d convolution in (``cudnn_conv_suggest_memory_format``, with
    ``Tensor.suggest_memory_format``'s stride rules)."""
    if input.dtype == torch.float64 or weight.dtype == torch.float64 or weight.dim() != 4:
        return torch.contiguous_format
    if torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def tensor_cores(dtype: torch.dtype, gpu: Gpu, allow_tf32: bool) -> bool:
    """Whether cuDNN runs a ``dtype`` convolution on ``gpu``'s tensor cores: fp16 from sm70,
    bf16 from sm80, fp32 from sm80 as TF32 when ``torch.backends.cudnn.allow_tf32`` (on by
    default; ``filterEngineConfigs`` drops tensor-core engines for fp32 otherwise)."""
    if dtype == torch.float16:
        return gpu.sm >= 70
    if dtype == torch.bfloat16 or (dtype == torch.float32 and allow_tf32):
        return gpu.sm >= 80
    return False


def cudnn_workspace(input: torch.Tensor, weight: torch.Tensor, output: torch.Tensor,
                    layout: torch.memory_format, gpu: Gpu, allow_tf32: bool = True) -> int:
    """The workspace (bytes) the model gives a cuDNN convolution: the NHWC/KRSC copies of
    input, weight and output for a tensor-core convolution in NCHW (and for bf16 a float32
    copy of the output), none otherwise (see the module docstring)."""
    if layout == torch.channels_last or not tensor_cores(input.dtype, gpu, allow_tf32):
        return 0
    copies = sum(t.numel() * t.element_size() for t in (input, weight, output))
    if input.dtype == torch.bfloat16:
        copies += output.numel() * 4
    return copies


class CudaConvolution(TorchFunctionMode):
    """While active, ``F.conv2d`` on meta tensors allocates what cuDNN's path on ``gpu``
    (default: the default card) would, the workspace on ``device`` when one is given."""

    def __init__(self, gpu: Gpu | None = None, device: SimulatedDevice | None = None) -> None:
        super().__init__()
        self.gpu = gpu or gpu_for(None)
        self.device = device
        self.allow_tf32 = torch.backends.cudnn.allow_tf32

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            input = args[0] if args else kwargs.get("input")
            if input is not None and input.device.type == "meta":
                return self._conv2d(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _conv2d(self, func: Any, input: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        layout = cudnn_memory_format(input, weight)
        input = input.contiguous(memory_format=layout)
        weight = weight.contiguous(memory_format=layout)
        # The output's shape from an empty batch (which allocates nothing), then the output
        # itself in cuDNN's layout.
        shape = func(input[:0], weight, None, *args, **kwargs).shape
        out = torch.empty((input.shape[0], *shape[1:]), dtype=input.dtype, device=input.device,
                          memory_format=layout)
        if self.device is not None:
            nbytes = cudnn_workspace(input, weight, out, layout, self.gpu, self.allow_tf32)
            self.device.free(self.device.allocate(nbytes, "cuDNN workspace"))
        if bias is not None:
            out.add_(bias.reshape(1, -1, 1, 1))
        return out
