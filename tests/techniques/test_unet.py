"""The UNet rewritten for speed: channels-last weights, a traced graph, a compiled graph.

A faster UNet that draws another picture is a regression no speed test sees (diffusers issues
8880 and 12131 were speed; 11981 and 12673 were wrong images), so each is checked against the
images of the same pipeline without it, within the registry's tolerance for its technique.
"""

from __future__ import annotations

import pytest
from probes import COMPILE_ON_CPU_IS_TOO_SLOW, gpu_run, without  # noqa: F401 - gpu_run: the mark's condition

from pytest_sdmem.building.runner import SdPipe


@pytest.mark.parametrize("sd_pipe", ["channels_last"], indirect=True)
def test_channels_last_strides_as_the_guide_prints(sd_pipe: SdPipe) -> None:
    """Guide, channels_last: ``unet.to(memory_format=torch.channels_last)`` works in place;
    SD 1.5's ``unet.conv_out`` weight stride goes from (2880, 9, 3, 1) to (2880, 1, 960, 320).

    The weight of shape (out, in, h, w) has strides (in*h*w, 1, w*in, in): channel stride 1,
    as printed for SD 1.5's 4x320x3x3 kernel; and the images stay the contiguous UNet's.
    """
    weight = sd_pipe.pipe.unet.conv_out.weight
    _, channels, height, width = weight.shape
    assert weight.stride() == (channels * height * width, 1, width * channels, channels)
    sd_pipe.assert_matches_baseline("none")


@pytest.mark.parametrize(
    ("sd_pipe", "graph"),
    [
        pytest.param("jit_trace", "jit_trace", id="jit_trace"),
        # The compiled row of test_guide_table.py: on a GPU run one compilation serves both
        # (the second reuses inductor's cache).
        pytest.param("fp16+channels_last+compile", "compile", marks=COMPILE_ON_CPU_IS_TOO_SLOW,
                     id="fp16+channels_last+compile"),
    ],
    indirect=["sd_pipe"],
)
def test_traced_and_compiled_unet_give_the_eager_images(sd_pipe: SdPipe, graph: str) -> None:
    """Guide, traced UNet: ``torch.jit.trace`` of the UNet, the third row of its table (x2.96
    cumulative); ``torch.compile`` is today's replacement (tracing is deprecated).

    The traced or compiled UNet generates the images of the same pipeline with the eager UNet.
    """
    sd_pipe.assert_matches_baseline(without(sd_pipe.technique, graph))
