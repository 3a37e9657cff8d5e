"""2-d convolutions in cuDNN's memory format on meta tensors, to the byte."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytest_sdmem.estimate.convolution import CudaConvolution, cudnn_memory_format
from pytest_sdmem.estimate.device import SimulatedDevice

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


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2}, {"padding": "same"}, {"groups": 3},
                                    {"dilation": 2, "padding": 2}])
def test_output_shape_is_the_convolution_s(kwargs: dict) -> None:
    weight = torch.empty(6, 1 if kwargs.get("groups") else 3, 3, 3, device="meta")
    x = torch.empty(2, 3, 17, 17, device="meta")
    expected = F.conv2d(x, weight, None, **kwargs).shape
    with CudaConvolution():
        assert F.conv2d(x, weight.to(memory_format=CL), torch.empty(6, device="meta"),
                        **kwargs).shape == expected
