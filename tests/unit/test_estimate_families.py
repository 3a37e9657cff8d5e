"""--sdmem-estimate beyond SD 1.5: every family's pipeline runs on meta tensors under every
technique the estimator models for it (or is refused with the registry's reason), and the
full-size SDXL and Flux-dev estimates keep invariants that a wrong placement, dtype or scheduler
would break. The tiny families cost about a second an estimate; the full-size ones a few."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from diffusers import FluxTransformer2DModel
from transformers import T5EncoderModel

from pytest_sdmem.building.generation import generation_defaults
from pytest_sdmem.building.pipelines import (
    PARAMETER_COUNTS,
    TINY_MODELS,
    build_pipeline,
    get_spec,
)
from pytest_sdmem.building.techniques import REGISTRY, TechniqueError
from pytest_sdmem.estimate import EstimateReport, UnsupportedTechniqueError, estimate_generation
from pytest_sdmem.estimate.allocator import round_size
from pytest_sdmem.estimate.attention import CUDNN, EFFICIENT, FLASH, CudaAttention, choose_kernel
from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.gpus import gpu_for
from pytest_sdmem.estimate.placement import apply_order
from pytest_sdmem.estimate.run import HISTORY_FREE_STEPS, unsupported_reason

#: Whether the installed transformers runs T5's attention through SDPA (5.25 does; 5.4, the
#: oldest supported, has only T5's eager attention, where no SDPA kernel is chosen).
T5_SDPA = int(bool(getattr(T5EncoderModel, "_supports_sdpa", False)))

FAMILY_MODELS = tuple(m for m in TINY_MODELS.values() if m != "tiny")  # tiny: test_estimate_run
#: The sets each tiny family is estimated under: together they hold every technique the
#: estimator models (checked below), combined where they do not conflict, to keep the cost down.
#: "{dtype}" is the family's half dtype (Flux refuses fp16).
SETS = (
    "none",
    "{dtype}+sdpa",
    # bf16: SDXL's fp16 VAE is upcast for the decode, which layerwise casting refuses.
    "bf16+sdpa+vae_slicing+vae_tiling+layerwise_casting",
    "{dtype}+attention_slicing(1)+channels_last",
    "{dtype}+sdpa+model_offload",
    "{dtype}+sdpa+sequential_offload",
    "{dtype}+sdpa+group_offload",
    "{dtype}+sdpa+sync_group_offload",
)


def half(model: str) -> str:
    return "bf16" if get_spec(model).family == "flux" else "fp16"


@cache
def estimate(model: str, technique: str, batch_size: int = 1, size: int | None = None,
             gpu: str | None = None) -> EstimateReport:
    args = generation_defaults(model, size=size).with_overrides(batch_size=batch_size)
    return estimate_generation(model, technique.format(dtype=half(model)), args, gpu=gpu)


def test_the_sets_hold_every_modelled_technique() -> None:
    named = {part.split("(")[0] for s in SETS for part in s.split("+")} - {"{dtype}"}
    modelled = {name for name, t in REGISTRY.items() if t.estimation.refused is None}
    assert modelled - {"fp16", "bf16"} <= named


@pytest.mark.parametrize("technique", SETS)
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_every_tiny_family_under_every_modelled_technique(model: str, technique: str) -> None:
    expr = technique.format(dtype=half(model))
    reason = unsupported_reason(expr, model)
    if reason is not None:
        # A UNet-side technique on a transformer family: refused with the registry's reason.
        assert get_spec(model).family in ("sd3", "flux") and "attention_slicing" in expr
        with pytest.raises(UnsupportedTechniqueError, match="does not apply to"):
            estimate(model, technique)
        return
    report = estimate(model, technique)
    spec = get_spec(model)
    assert set(report.phase_peaks) == {"pipeline", *spec.models}
    assert max(report.phase_peaks.values()) == report.estimated_allocated
    assert report.tensor_bytes_at_peak <= report.estimated_allocated <= report.estimated_reserved
    assert report.steps_estimated == HISTORY_FREE_STEPS  # Euler / flow-matching Euler
    # The text encoders (and SD 3's and Flux's transformers) call SDPA whatever the set; in
    # half precision their small head dims take flash on the default A100.
    assert sum(report.attention_kernels.values()) > 0
    if expr != "none":
        assert report.attention_kernels.get(FLASH, 0) > 0


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_offloading_keeps_the_weights_off_the_device(model: str) -> None:
    resident = estimate(model, "{dtype}+sdpa")
    weights = resident.start_allocated
    assert weights > 0
    for offload in ("model_offload", "sequential_offload", "group_offload",
                    "sync_group_offload"):
        report = estimate(model, "{dtype}+sdpa+" + offload)
        # Sequential offload leaves some buffers there: CLIP's position ids, and SD 3's
        # positional embedding (its transformer has no parameters of its own, so diffusers
        # does not offload its buffers).
        assert report.start_allocated < weights / 5, offload
        assert report.peak_place is not None and report.peak_place.weights < weights, offload
    # Sequential and group offloading hold a layer's weights at a time, model offload a model.
    layer = estimate(model, "{dtype}+sdpa+sequential_offload").peak_place
    whole = estimate(model, "{dtype}+sdpa+model_offload").peak_place
    assert layer is not None and whole is not None and layer.weights < whole.weights


def test_fp16_flux_and_fp16_layerwise_casting_on_sdxl_are_refused() -> None:
    with pytest.raises(UnsupportedTechniqueError, match="fp16 does not apply to flux"):
        estimate_generation("tiny-flux", "fp16")
    # On meta the fp16 hooks would run on the float32 VAE without the dtype error CUDA
    # raises: the apply function refuses it before anything is estimated.
    with pytest.raises(TechniqueError, match="force_upcast"):
        estimate_generation("tiny-sdxl", "fp16+layerwise_casting")


def test_sdxl_force_upcast_decodes_with_a_float32_vae() -> None:
    """SDXL's VAE (force_upcast) is cast to float32 for the decode. Resident, its fp16 weights
    leave the device as the float32 ones arrive; under model offload the cast happens on the
    host and exactly the float32 VAE is onloaded for the decode."""
    vae = list(_meta_vae("tiny-sdxl").parameters())
    fp16, fp32 = (sum(round_size(p.numel() * size) for p in vae) for size in (2, 4))
    resident = estimate("tiny-sdxl", "{dtype}+sdpa")
    assert resident.peak_phase == "vae" and resident.peak_place is not None
    assert resident.peak_place.weights == resident.start_allocated - fp16
    offloaded = estimate("tiny-sdxl", "{dtype}+sdpa+model_offload")
    assert offloaded.peak_place is not None and offloaded.peak_phase == "vae"
    assert offloaded.peak_place.weights == fp32
    # Everything else at the peak is the same: resident, the float32 VAE is among the other
    # blocks (cast on the device); offloaded, it is not counted a second time.
    assert (resident.peak_place.allocated - resident.peak_place.weights - fp32
            == offloaded.peak_place.allocated - offloaded.peak_place.weights)


def _meta_vae(model: str) -> torch.nn.Module:
    return build_pipeline(model, device="meta").vae


# -- Full size: the code paths of the real architectures ---------------------------------------
# 256x256 rather than the families' 1024x1024 keeps each estimate to a few seconds: the same
# modules, the same code and the same weights run (the weights are where the invariants are);
# only the activations are 16x smaller. docs/estimate-evidence.md has the 1024x1024 figures.
FULL_SIZE = 256
#: Weights on the device exceed 2 bytes a parameter only by the allocator's rounding (see
#: ``rounding_bound``): 0.05% for Flux-dev, 1.7% for SDXL, whose UNet has 101 tensors of
#: exactly 25 MiB (the 1280-wide GEGLU projections) that keep a whole 1 MiB each. fp32
#: weights or a model placed twice would be 100% off.
ROUNDING = 0.02


def rounding_bound(tensors: list[torch.Tensor]) -> int:
    """The most the caching allocator can add to the tensors' bytes when placing them: each
    block is rounded up to 512 bytes, and a tensor above 10 MiB gets its own segment rounded
    up to 2 MiB, which it keeps whole when at most 1 MiB would be left over."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    return sum(512 + (2**20 if n > 10 * 2**20 else 0) for n in sizes)


def test_flux_dev_transformer_in_bf16_is_two_bytes_a_parameter_on_the_device() -> None:
    config = get_spec("flux-dev").models["transformer"].config
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**config).to(torch.bfloat16)
    tensors = list(apply_order(transformer))
    with SimulatedDevice() as device:
        device.place(tensors)
    parameters = PARAMETER_COUNTS["flux-dev"]["transformer"]  # 11,901,408,320
    assert 2 * parameters <= device.allocated <= 2 * parameters + rounding_bound(tensors)


def test_flux_dev_bf16_weights_are_two_bytes_a_parameter() -> None:
    report = estimate("flux-dev", "{dtype}+sdpa", size=FULL_SIZE)
    parameters = sum(PARAMETER_COUNTS["flux-dev"].values())  # 11,901,408,320 in the transformer
    assert 2 * parameters <= report.start_allocated
    assert report.start_allocated == pytest.approx(2 * parameters, rel=ROUNDING)
    assert report.steps_estimated == HISTORY_FREE_STEPS  # flow-matching Euler
    assert report.peak_phase == "vae"  # at 256x256; the transformer's peak is just below
    # Every transformer attention (19 double + 38 single blocks, 2 steps) and CLIP-L's 12
    # take flash on an A100; T5's 24 (relative position bias as a mask) and the VAE's
    # 512-wide head the memory-efficient kernel.
    assert report.attention_kernels == {FLASH: 2 * (19 + 38) + 12, EFFICIENT: 24 * T5_SDPA + 1}
    sequential = estimate("flux-dev", "{dtype}+sdpa+sequential_offload", size=FULL_SIZE)
    # One layer at a time: T5's 263 MB embedding table is the largest.
    assert sequential.estimated_allocated < report.estimated_allocated / 50
    assert sequential.peak_place is not None
    assert sequential.peak_place.weights == pytest.approx(32128 * 4096 * 2, rel=0.01)


def test_sdxl_full_size_fp16_with_model_offload_below_resident() -> None:
    resident = estimate("sdxl", "{dtype}+sdpa", size=FULL_SIZE)
    parameters = sum(PARAMETER_COUNTS["sdxl"].values())
    assert 2 * parameters <= resident.start_allocated
    assert resident.start_allocated == pytest.approx(2 * parameters, rel=ROUNDING)
    assert set(resident.phase_peaks) == {"pipeline", "text_encoder", "text_encoder_2", "unet",
                                         "vae"}
    offloaded = estimate("sdxl", "{dtype}+sdpa+model_offload", size=FULL_SIZE)
    # The UNet's 5.1 GB in fp16 is the largest model on the device at once.
    unet = 2 * PARAMETER_COUNTS["sdxl"]["unet"]
    assert unet < offloaded.estimated_allocated < resident.estimated_allocated
    assert offloaded.peak_phase == "unet"


def test_batch_4_peaks_above_batch_1() -> None:
    # tiny-sdxl peaks in the VAE decode, whose activations grow with the batch (tiny-flux
    # peaks in T5's 512 x 512 position buckets, which the pipeline computes once per prompt).
    one, four = (estimate("tiny-sdxl", "{dtype}+sdpa", batch_size=b) for b in (1, 4))
    assert four.estimated_allocated > one.estimated_allocated
    assert four.start_allocated == one.start_allocated


# -- The transformers' attention ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "heads", "dim", "image", "text", "cat_on_heads_major"), [
    # SD 3 at 1024x1024: 64x64 latent patches, 77 CLIP + 256 T5 tokens; the processor
    # concatenates (B, H, L, D) views, so the joint query is heads-major.
    ("sd3", 24, 64, 4096, 333, True),
    # Flux at 1024x1024: 4096 packed latents, 512 T5 tokens; the processor concatenates
    # (B, L, H, D) and the native backend permutes: sequence-major.
    ("flux", 24, 128, 4096, 512, False),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_joint_attention_allocates_the_flash_output_and_log_sum_exp(
        name: str, heads: int, dim: int, image: int, text: int, cat_on_heads_major: bool,
        dtype: torch.dtype) -> None:
    batch, seq = 2, image + text

    def joint() -> torch.Tensor:
        if cat_on_heads_major:
            parts = [torch.empty(batch, n, heads * dim, dtype=dtype, device="meta")
                     .view(batch, n, heads, dim).transpose(1, 2) for n in (image, text)]
            return torch.cat(parts, dim=2)
        parts = [torch.empty(batch, n, heads * dim, dtype=dtype, device="meta")
                 .unflatten(-1, (heads, dim)) for n in (text, image)]
        return torch.cat(parts, dim=1).permute(0, 2, 1, 3)

    for card, kernel in (("NVIDIA A100-SXM4-80GB", FLASH),
                         ("NVIDIA H100 80GB HBM3", FLASH if cat_on_heads_major else CUDNN)):
        gpu = gpu_for(card)
        with SimulatedDevice() as device, CudaAttention(gpu) as attention, torch.no_grad():
            q, k, v = joint(), joint(), joint()
            assert choose_kernel(q, k, v, gpu=gpu) == kernel
            before = device.allocated
            device.reset_peak()
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            size = batch * heads * seq * dim * 2
            lse = batch * heads * seq * 4  # float32, freed at return
            rounded = sum(round_size(n) for n in (size, lse))
            # The output (27 to 57 MB) gets its own segment, kept whole below 1 MiB of rest.
            assert rounded <= device.allocator.peak_allocated - before < rounded + 2**20
            # Far below the (B, H, L, L) scores the meta math path would have made.
            assert device.allocator.peak_allocated - before < batch * heads * seq * seq * 2 / 20
            assert out.shape == (batch, heads, seq, dim)
        assert dict(attention.kernels) == {kernel: 1}


def test_the_processors_lay_out_joint_attention_as_the_table_says() -> None:
    """The real processors on an H100: Flux's attention reaches SDPA sequence-major (cuDNN
    takes it), SD 3's joint attention heads-major (cuDNN's layout check fails, flash takes
    it). Tiny: 2 steps x 2 transformer blocks each; the rest is the text encoders and VAE."""
    h100 = "NVIDIA H100 80GB HBM3"
    flux = estimate("tiny-flux", "{dtype}+sdpa", gpu=h100).attention_kernels
    assert flux == {CUDNN: 2 * 2 + 2 + 2 * T5_SDPA + 1}  # + CLIP's 2 layers, T5's 2, the VAE's 1
    sd3 = estimate("tiny-sd3", "{dtype}+sdpa", gpu=h100).attention_kernels
    # CLIP x2 and T5 encode the prompt and the negative prompt: (2 + 2 + 2) x 2, + the VAE.
    assert sd3 == {FLASH: 2 * 2, CUDNN: (4 + 2 * T5_SDPA) * 2 + 1}
