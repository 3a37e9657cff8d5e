"""2-d convolutions in cuDNN's memory format on meta tensors, to the byte."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytest_sdmem.estimate.convolution import (
    CudaConvolution,
    cudnn_memory_format,
    cudnn_workspace,
)
from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.gpus import gpu_for

CL = torch.channels_last


def _conv(channels_last: bool) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device="meta", dtype=torch.float16)
    return conv.to(memory_format=CL) if channels_last else conv


def test_layout_is_channels_last_when_input_or_weight_is() -> None:
    x = torch.empty(2, 3, 64, 64, device="meta")
    assert cudnn_memory_format(x, _conv(False).weight) == torch.contiguous_format
    assert cudnn_memory_format(x, _conv(True).weight) == CL
    assert cudnn_memory_format(x.to(memory_format=CL), _conv(False).weight) == CL


def test_channels_last_weights_copy_the_input_and_give_a_channels_last_output() -> None:
    conv = _conv(True)
    with SimulatedDevice() as device, CudaConvolution(), torch.no_grad():
        device.place(conv.parameters())  # 8*3*9*2 = 432 -> 512, bias 16 -> 512
        x = torch.empty(2, 3, 64, 64, dtype=torch.float16, device="meta")  # 49,152
        y = conv(x)
        # cuDNN converts the input to channels-last (49,152, alive during the call) and
        # allocates the output (2*8*64*64*2 = 131,072) in channels-last.
        assert device.allocator.peak_allocated == 1024 + 2 * 49_152 + 131_072
        assert device.allocated == 1024 + 49_152 + 131_072
        assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()


def test_contiguous_convolution_allocates_only_its_output() -> None:
    conv = _conv(False)
    with SimulatedDevice() as device, CudaConvolution(), torch.no_grad():
        device.place(conv.parameters())
        x = torch.empty(2, 3, 64, 64, dtype=torch.float16, device="meta")
        y = conv(x)
        assert device.allocator.peak_allocated == 1024 + 49_152 + 131_072
        assert y.is_contiguous()


def test_group_norm_after_a_channels_last_convolution_copies_to_contiguous() -> None:
    conv = _conv(True)
    norm = torch.nn.GroupNorm(4, 8).to(device="meta", dtype=torch.float16)
    with SimulatedDevice() as device, CudaConvolution(), torch.no_grad():
        device.place([*conv.parameters(), *norm.parameters()])  # 4 x 512
        x = torch.empty(2, 3, 64, 64, dtype=torch.float16, device="meta")
        device.reset_peak()
        y = norm(conv(x))
        # GroupNorm on a GPU wants a contiguous input: the real composite copies the
        # channels-last output (131,072) before allocating its own (131,072) and its two
        # float32 statistics (2 x 4 groups x 4 = 32 -> 512 each).
        assert device.allocator.peak_allocated == (2_048 + 49_152 + 3 * 131_072 + 2 * 512)
        assert y.is_contiguous()


def _vae_conv(dtype: torch.dtype, size: int, c_in: int, c_out: int) -> tuple[torch.Tensor, ...]:
    """Input, weight and output of a VAE decoder 3x3 convolution at ``size``x``size``."""
    return (torch.empty(1, c_in, size, size, dtype=dtype, device="meta"),
            torch.empty(c_out, c_in, 3, 3, dtype=dtype, device="meta"),
            torch.empty(1, c_out, size, size, dtype=dtype, device="meta"))


@pytest.mark.parametrize(("card", "dtype", "size", "c_in", "c_out", "workspace"), [
    # Tensor-core convolutions in NCHW: NHWC copies of input and output, KRSC weight copy.
    # The VAE decoder at 512x512 (256 -> 128 channels, then 128 -> 128) and at 256x256.
    ("NVIDIA A100-SXM4-80GB", torch.float16, 512, 256, 128,
     2 * (256 + 128) * 512 * 512 + 2 * 128 * 256 * 9),  # 201.9 MB
    ("NVIDIA A100-SXM4-80GB", torch.float16, 512, 128, 128, 2 * 256 * 512 * 512 + 2 * 128**2 * 9),
    ("NVIDIA H100 80GB HBM3", torch.float16, 256, 512, 256,
     2 * (512 + 256) * 256 * 256 + 2 * 256 * 512 * 9),
    # fp32 runs as TF32 on tensor cores from sm80 (cudnn.allow_tf32 is on by default) ...
    ("NVIDIA A100-SXM4-80GB", torch.float32, 512, 128, 128, 4 * 256 * 512 * 512 + 4 * 128**2 * 9),
    # ... and off them before: no transposes.
    ("Tesla V100-SXM2-16GB", torch.float32, 512, 128, 128, 0),
    ("Tesla T4", torch.float16, 512, 128, 128, 2 * 256 * 512 * 512 + 2 * 128**2 * 9),
    # bf16: a float32 copy of the output on top.
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 512, 128, 128,
     2 * 256 * 512 * 512 + 2 * 128**2 * 9 + 4 * 128 * 512 * 512),
    ("Tesla T4", torch.bfloat16, 512, 128, 128, 0),
])
def test_cudnn_workspace_by_card_and_dtype(card: str, dtype: torch.dtype, size: int, c_in: int,
                                           c_out: int, workspace: int) -> None:
    x, w, y = _vae_conv(dtype, size, c_in, c_out)
    assert cudnn_workspace(x, w, y, torch.contiguous_format, gpu_for(card)) == workspace


def test_no_workspace_in_channels_last_or_without_tf32() -> None:
    x, w, y = _vae_conv(torch.float16, 64, 8, 8)
    a100 = gpu_for(None)
    assert cudnn_workspace(x, w, y, CL, a100) == 0
    x, w, y = _vae_conv(torch.float32, 64, 8, 8)
    assert cudnn_workspace(x, w, y, torch.contiguous_format, a100, allow_tf32=False) == 0


def test_the_workspace_is_allocated_during_the_call_only() -> None:
    conv = _conv(False)
    with SimulatedDevice() as device, CudaConvolution(gpu_for(None), device), torch.no_grad():
        device.place(conv.parameters())
        x = torch.empty(2, 3, 64, 64, dtype=torch.float16, device="meta")
        y = conv(x)
        # Weights 1024, input 49,152, output 131,072, workspace 49,152 + 432 + 131,072 =
        # 180,656 -> 180,736 (a small-pool block).
        assert device.allocator.peak_allocated == 1024 + 49_152 + 131_072 + 180_736
        assert device.allocated == 1024 + 49_152 + 131_072
        assert device.peak_place is not None
        assert device.peak_place.largest[0].tensor == "cuDNN workspace"
        assert y.is_contiguous()


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2}, {"padding": "same"}, {"groups": 3},
                                    {"dilation": 2, "padding": 2}])
def test_output_shape_is_the_convolution_s(kwargs: dict) -> None:
    weight = torch.empty(6, 1 if kwargs.get("groups") else 3, 3, 3, device="meta")
    x = torch.empty(2, 3, 17, 17, device="meta")
    expected = F.conv2d(x, weight, None, **kwargs).shape
    with CudaConvolution():
        assert F.conv2d(x, weight.to(memory_format=CL), torch.empty(6, device="meta"),
                        **kwargs).shape == expected
