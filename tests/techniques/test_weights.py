"""Weight memory: half precision, and float8 storage with layerwise casting.

Weights are measured as what loading a pipeline leaves allocated on the device, so the bytes
each tensor is really stored in count, whatever its parameter count says.
"""

from __future__ import annotations

import pytest
from probes import load, unet_step, without

from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.runner import SdPipe
from pytest_sdmem.measuring.memory import MemoryTracker


@pytest.mark.parametrize("sd_pipe", ["fp16", "bf16"], indirect=True)
def test_half_precision_halves_the_weights(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker
) -> None:
    """Guide, fp16: loading with ``torch_dtype=torch.float16`` halves the weights' memory
    (fp16 weights of SD 1.5: about 2.13 GB), the first row of its table (x2.63); bfloat16
    has the same width.

    A pipeline of the technique keeps half the bytes of the fp32 one, within 1% (integer
    buffers such as the text encoder's position ids stay as they are).
    """
    half, half_bytes = load(sd_pipe, sd_pipe.technique.expr, cuda_mem_tracker)
    half.release()
    full, full_bytes = load(sd_pipe, "none", baseline_mem_tracker)
    full.release()

    assert half_bytes / full_bytes == pytest.approx(0.5, abs=0.01), (
        f"{sd_pipe.technique}: {format_size(half_bytes)} of weights against "
        f"{format_size(full_bytes)} in fp32")


@pytest.mark.sd_family("sd1", "sd2")  # one UNet step with SD 1.x/2.x's inputs (probes.unet_step)
@pytest.mark.parametrize("sd_pipe", ["fp16+layerwise_casting"], indirect=True)
def test_layerwise_casting_stores_the_weights_below_fp16(
    sd_pipe: SdPipe, cuda_mem_tracker: MemoryTracker, baseline_mem_tracker: MemoryTracker
) -> None:
    """diffusers' own test of layerwise casting: float8 storage takes less memory than the
    compute dtype's weights, and so does the peak of inference.

    The UNet and the VAE store one byte per weight instead of fp16's two (norm layers and the
    transformers text encoder excepted), so the pipeline keeps at most three quarters of fp16's
    weight bytes; and a UNet step, weights included, peaks lower than with fp16 weights: each
    layer's upcast copy costs less than the storage saved.
    """
    cast, cast_bytes = load(sd_pipe, sd_pipe.technique.expr, cuda_mem_tracker)
    with cast:
        cast_step = unet_step(cast, cuda_mem_tracker).peak_delta
    fp16, fp16_bytes = load(sd_pipe, without(sd_pipe.technique, "layerwise_casting"),
                            baseline_mem_tracker)
    with fp16:
        fp16_step = unet_step(fp16, baseline_mem_tracker).peak_delta

    assert cast_bytes <= 0.75 * fp16_bytes, (
        f"float8 storage keeps {format_size(cast_bytes)} of weights, fp16 "
        f"{format_size(fp16_bytes)}")
    assert cast_bytes + cast_step < fp16_bytes + fp16_step, (
        f"a UNet step peaks at {format_size(cast_bytes + cast_step)} with float8 storage, "
        f"{format_size(fp16_bytes + fp16_step)} with fp16 weights")
