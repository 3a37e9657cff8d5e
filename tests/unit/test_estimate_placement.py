"""Placement policies on a toy multi-model pipeline, against peaks computed by hand.

The toy has the shape of SD's pipeline: a text model, a denoiser called twice, a decoder
entered through an ``apply_forward_hook`` method (like ``AutoencoderKL.decode``) and a checker
excluded from offloading (like the safety checker). All in float32; every size below is a
multiple of 512 bytes and at most 1 MiB, so each tensor is exactly one small-pool block.

Weights: text Linear(256, 256): 262,144 + 1,024 = 263,168. Denoiser Linear(256, 512):
524,288 + 2,048 = 526,336; Linear(512, 256): 524,288 + 1,024 = 525,312; 1,051,648 together.
Decoder Linear(256, 128): 131,072 + 512 = 131,584. Checker Linear(256, 16): 16,384 + 64 -> 512
= 16,896. Activations for a batch of 4: x, the text output and each denoiser output 4,096;
inside the denoiser the first layer's output and the ReLU's 8,192 each; decoded 2,048;
checked 256 -> 512.
"""

from __future__ import annotations

import torch
from diffusers.hooks import apply_layerwise_casting
from diffusers.utils.accelerate_utils import apply_forward_hook

from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.placement import (
    GroupOffload,
    ModelEntries,
    ModelOffload,
    Models,
    Placement,
    Resident,
    SequentialOffload,
    apply_order,
)

W_TEXT, W_L1, W_L2, W_DECODER, W_CHECKER = 263_168, 526_336, 525_312, 131_584, 16_896
W_DENOISER = W_L1 + W_L2


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(256, 128)

    @apply_forward_hook
    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


def toy_models() -> Models:
    with torch.device("meta"):
        models = {
            "text": torch.nn.Linear(256, 256),
            "denoiser": torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                            torch.nn.Linear(512, 256)),
            "decoder": Decoder(),
            "checker": torch.nn.Linear(256, 16),
        }
    return Models(models, offload_seq=("text", "denoiser", "decoder"), exclude=("checker",))


def run_toy(placement: Placement) -> SimulatedDevice:
    """Run the toy pipeline with ``placement``; the returned device holds the figures."""
    models = toy_models()
    m = models.models
    with SimulatedDevice() as device, torch.no_grad():
        placement.attach(models, device)
        device.reset_peak()
        with ModelEntries(models, [device.set_phase, placement.enter_model]):
            x = torch.empty(4, 256, device="meta")
            h = m["text"](x)
            for _ in range(2):
                h = m["denoiser"](h)
            decoded = m["decoder"].decode(h)
            checked = m["checker"](h)
        placement.finish()
        placement.detach()
        assert decoded.shape == (4, 128) and checked.shape == (4, 16)
    return device


def test_resident_keeps_every_weight_on_the_device() -> None:
    device = run_toy(Resident())
    weights = W_TEXT + W_DENOISER + W_DECODER + W_CHECKER
    # Peak in the denoiser: x, its input, the first layer's output and the ReLU's.
    assert device.allocator.peak_allocated == weights + 4_096 + 4_096 + 8_192 + 8_192
    # End: weights, x, h, decoded, checked.
    assert device.allocated == weights + 4_096 + 4_096 + 2_048 + 512


def test_model_offload_moves_whole_models_along_the_chain() -> None:
    device = run_toy(ModelOffload())
    assert device.phase_peaks == {
        # The excluded checker is on the device from the start; x is made before any model.
        "pipeline": W_CHECKER + 4_096,
        "text": W_CHECKER + W_TEXT + 4_096 + 4_096,
        # The text model is sent back before the denoiser comes on.
        "denoiser": W_CHECKER + W_DENOISER + 4_096 + 4_096 + 8_192 + 8_192,
        # Entered through decode(): the denoiser goes back before the decoder comes on.
        "decoder": W_CHECKER + W_DECODER + 4_096 + 4_096 + 2_048,
        # The checker is not in the chain: the decoder stays until the end of the call.
        "checker": W_CHECKER + W_DECODER + 4_096 + 4_096 + 2_048 + 512,
    }
    assert device.allocated == W_CHECKER + 4_096 + 4_096 + 2_048 + 512  # decoder sent back


def test_sequential_offload_onloads_each_layer_for_its_forward() -> None:
    device = run_toy(SequentialOffload())
    # The denoiser's second layer is the largest moment: the checker, the layer's weights,
    # x, the denoiser input, the ReLU output (the first layer's output is gone) and its own
    # output.
    assert device.allocator.peak_allocated == W_CHECKER + W_L2 + 4_096 + 4_096 + 8_192 + 4_096
    assert device.phase_peaks["denoiser"] == device.allocator.peak_allocated
    # The decoder's layer is onloaded although decode() is not its forward.
    assert device.phase_peaks["decoder"] == W_CHECKER + W_DECODER + 4_096 + 4_096 + 2_048


def test_group_offload_prefetches_the_next_layer_from_the_second_call() -> None:
    device = run_toy(GroupOffload(use_stream=True))
    # First denoiser call: one layer at a time. Second call: the order is known, so while
    # the first layer runs the second is already on the device.
    assert device.allocator.peak_allocated == W_DENOISER + 4_096 + 4_096 + 8_192
    # Nothing is excluded from group offloading: the checker is only there for its forward.
    assert device.phase_peaks["checker"] == W_CHECKER + 4_096 + 4_096 + 2_048 + 512
    assert device.allocated == 4_096 + 4_096 + 2_048 + 512
    # The prefetched weights came through the transfer stream: its segments are apart.
    assert device.allocator.reserved > 2 * 2**20


def test_group_offload_without_streams_never_prefetches() -> None:
    device = run_toy(GroupOffload(use_stream=False))
    assert device.allocator.peak_allocated == W_L2 + 4_096 + 4_096 + 8_192 + 4_096


def test_hooks_are_removed_after_the_run() -> None:
    models = toy_models()
    placement = SequentialOffload()
    with SimulatedDevice() as device, torch.no_grad():
        placement.attach(models, device)
        with ModelEntries(models, [placement.enter_model]):
            assert hasattr(models.models["decoder"], "_hf_hook")
        placement.detach()
        assert not hasattr(models.models["decoder"], "_hf_hook")
        before = device.allocated
        x = torch.empty(4, 256, device="meta")
        models.models["text"](x)  # no hook onloads the weights any more
        assert device.allocated == before + 4_096


def test_apply_order_is_the_order_of_module_to() -> None:
    parent = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    parent.register_parameter("scale", torch.nn.Parameter(torch.ones(1)))
    parent.register_buffer("offset", torch.zeros(1))
    order = list(apply_order(parent))
    expected = [parent[0].weight, parent[0].bias, parent[1].weight, parent[1].bias,
                parent.scale, parent.offset]
    assert len(order) == len(expected) and all(a is b for a, b in zip(order, expected,
                                                                      strict=True))


def test_layerwise_casting_runs_its_real_hooks_on_meta() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256)).to(
        device="meta", dtype=torch.float16)
    # No skip pattern (an empty one: None would put one hook on the whole Sequential).
    apply_layerwise_casting(net, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float16,
                            skip_modules_pattern=())
    with SimulatedDevice() as device, torch.no_grad():
        Resident().attach(Models({"net": net}), device)
        # float8 storage: 131,072 + 512 -> 512 and 131,072 + 256 -> 512.
        assert device.allocated == 131_072 + 512 + 131_072 + 512
        x = torch.empty(4, 256, dtype=torch.float16, device="meta")  # 2,048
        device.reset_peak()
        y = net(x)
        # The peak is the second layer's cast back to storage after its forward: the first
        # layer in float8 (131,072 + 512), the second's float16 copy (262,144 + 512) and its
        # new float8 weight (131,072, allocated before the float16 one is freed), x, the first
        # output (4,096) and the second (2,048).
        assert device.allocator.peak_allocated == (131_072 + 512 + 262_144 + 512 + 131_072
                                                   + 2_048 + 4_096 + 2_048)
        assert device.allocated == 131_072 + 512 + 131_072 + 512 + 2_048 + 2_048
        del y
