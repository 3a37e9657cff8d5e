"""The estimator's public API on the real pipeline code: refusals, the report, and every
technique it models, on the tiny pipeline (seconds)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.building.pipelines import ModelError, build_pipeline
from pytest_sdmem.building.techniques import REGISTRY, TechniqueSet, parse_technique
from pytest_sdmem.estimate import (
    DEFAULT_MAX_STEPS,
    ESTIMATED_DEVICE,
    EstimateReport,
    UnsupportedTechniqueError,
    estimate_generation,
    unsupported_reason,
)
from pytest_sdmem.estimate.allocator import round_size
from pytest_sdmem.estimate.placement import apply_order
from pytest_sdmem.estimate.run import HISTORY_FREE_STEPS

TINY_ARGS = GenerationArgs(num_inference_steps=2, height=64, width=64)
MODELLED = ("none", "fp16", "bf16", "sdpa", "attention_slicing", "attention_slicing(1)",
            "vae_slicing", "vae_tiling", "channels_last", "layerwise_casting", "model_offload",
            "sequential_offload", "group_offload", "sync_group_offload")


@pytest.fixture(scope="module")
def tiny() -> dict[str, EstimateReport]:
    """Estimates of the tiny pipeline, made once per technique."""
    return {}


def estimate_tiny(cache: dict[str, EstimateReport], technique: str) -> EstimateReport:
    if technique not in cache:
        cache[technique] = estimate_generation("tiny", technique, TINY_ARGS)
    return cache[technique]


@pytest.mark.parametrize("technique", MODELLED)
def test_modelled_techniques_are_estimated(tiny: dict[str, EstimateReport],
                                           technique: str) -> None:
    assert unsupported_reason(technique) is None
    report = estimate_tiny(tiny, technique)
    assert report.technique == parse_technique(technique).expr
    assert 0 < report.start_allocated < report.estimated_allocated or (
        technique.endswith("group_offload") and report.start_allocated == 0)
    assert report.tensor_bytes_at_peak <= report.estimated_allocated <= report.estimated_reserved
    assert set(report.phase_peaks) == {"pipeline", "text_encoder", "unet", "vae",
                                       "safety_checker"}
    assert max(report.phase_peaks.values()) == report.estimated_allocated


@pytest.mark.parametrize(("technique", "why"), [
    ("jit_trace", "TorchScript"), ("compile", "inductor"), ("xformers", "xFormers"),
    ("fp16+channels_last+jit_trace", "TorchScript"),
    ("layerwise_casting+model_offload", "layerwise_casting with model_offload"),
    ("layerwise_casting+group_offload", "layerwise_casting with group_offload"),
])
def test_techniques_it_cannot_follow_are_refused_with_the_reason(technique: str,
                                                                 why: str) -> None:
    reason = unsupported_reason(parse_technique(technique))
    assert reason is not None and why in reason and technique.split("+")[-1] in reason
    with pytest.raises(UnsupportedTechniqueError, match=why):
        estimate_generation("tiny", technique, TINY_ARGS)


def test_every_registered_technique_is_either_modelled_or_refused() -> None:
    for name in REGISTRY:
        if name not in MODELLED:
            assert unsupported_reason(name) is not None, name


def test_a_technique_the_estimator_does_not_know_is_refused() -> None:
    newcomer = replace(REGISTRY["fp16"], name="torchao_int8")
    reason = unsupported_reason(TechniqueSet((newcomer,)))
    assert reason is not None and "torchao_int8: the estimator has no model" in reason


def test_placement_follows_the_offload_mode(tiny: dict[str, EstimateReport]) -> None:
    resident = estimate_tiny(tiny, "none")
    model = estimate_tiny(tiny, "model_offload")
    sequential = estimate_tiny(tiny, "sequential_offload")
    group = estimate_tiny(tiny, "group_offload")
    # Model and sequential offload keep the excluded safety checker on the device from the
    # start; sequential offload also the models' buffers (CLIP's position ids), as accelerate
    # offloads buffers only of models with parameters of their own. Tiny's tensors are all
    # small-pool blocks: the sum of their rounded sizes.
    pipe = build_pipeline("tiny", device="meta", safety_checker=True)
    checker_bytes = sum(round_size(t.nbytes) for t in apply_order(pipe.safety_checker))
    buffer_bytes = sum(round_size(b.nbytes) for name in ("vae", "text_encoder", "unet")
                       for b in pipe.components[name].buffers())
    assert buffer_bytes == 1024  # position ids: 77 int64 = 616 bytes
    assert model.start_allocated == checker_bytes
    assert sequential.start_allocated == checker_bytes + buffer_bytes
    assert group.start_allocated == 0  # group offloading excludes nothing
    assert sequential.estimated_allocated < model.estimated_allocated
    assert model.estimated_allocated < resident.estimated_allocated
    assert group.estimated_allocated < model.estimated_allocated


def test_dtype_and_attention_techniques_change_the_estimate(
        tiny: dict[str, EstimateReport]) -> None:
    fp32, fp16 = estimate_tiny(tiny, "none"), estimate_tiny(tiny, "fp16")
    assert fp16.start_allocated < fp32.start_allocated * 0.55  # half, plus block rounding
    sdpa = estimate_tiny(tiny, "sdpa")
    assert sdpa.attention_kernels.get("efficient", 0) > fp32.attention_kernels.get("efficient", 0)
    assert estimate_tiny(tiny, "fp16+sdpa").attention_kernels.get("flash", 0) > 0


def test_report_as_memory_report_dict_and_text(tiny: dict[str, EstimateReport]) -> None:
    report = estimate_tiny(tiny, "fp16")
    memory = report.to_memory_report()
    assert memory.device == ESTIMATED_DEVICE == "cuda (estimated)"
    assert (memory.peak_allocated, memory.peak_reserved) == (report.estimated_allocated,
                                                              report.estimated_reserved)
    assert memory.peak_delta == report.estimated_allocated - report.start_allocated
    assert memory.host_peak_rss is None and memory.process_peak is None
    data = json.loads(json.dumps(report.to_dict()))
    assert data["estimated"] is True
    assert data["estimated_allocated_bytes"] == report.estimated_allocated
    assert data["peak_phase"] == report.peak_phase
    assert data["generation"]["height"] == 64 and data["not_modelled"]
    text = str(report)
    assert "tiny 'fp16'" in text and "estimated CUDA peak allocated" in text
    assert "cuBLAS" in text and f"in {report.peak_phase}" in text


def test_the_card_decides_kernels_and_workspaces_and_the_report_names_it(
        tiny: dict[str, EstimateReport]) -> None:
    a100 = estimate_tiny(tiny, "fp16+sdpa")
    h100 = estimate_generation("tiny", "fp16+sdpa", TINY_ARGS, gpu="NVIDIA H100 80GB HBM3")
    assert a100.attention_kernels.get("cudnn", 0) == 0 < h100.attention_kernels["cudnn"]
    # The same weights; the peak holds the larger sm90 cuBLAS workspace (32 MiB, not 8.125).
    assert h100.start_allocated == a100.start_allocated
    assert h100.estimated_allocated - a100.estimated_allocated >= (32 - 8.125) * 2**20
    assert "NVIDIA A100-SXM4-80GB (sm80" in a100.gpu and "sm90" in h100.gpu
    assert "cuBLAS 32 MiB" in h100.blas_workspaces
    place = h100.peak_place
    assert place is not None and place.allocated == h100.estimated_allocated
    assert place.phase == h100.peak_phase and place.module.startswith(place.phase)
    assert any(t.tensor == "cuBLAS workspace" for t in place.largest)
    data = json.loads(json.dumps(h100.to_dict()))
    assert data["gpu"] == h100.gpu and data["peak_place"]["op"] == place.op
    assert f"peak in {place.phase}, {place.module} calling {place.op}" in str(h100)
    assert "NVIDIA H100 80GB HBM3" in h100.to_memory_report().device_name


def test_steps_are_capped_per_scheduler_and_the_cap_is_reported() -> None:
    fifty = TINY_ARGS.with_overrides(num_inference_steps=50)
    report = estimate_generation("tiny", "fp16", fifty)  # DDIM keeps no history
    assert report.steps_estimated == HISTORY_FREE_STEPS
    assert f"{HISTORY_FREE_STEPS} of 50 steps" in str(report)
    unipc = estimate_generation("tiny", "fp16", fifty.with_overrides(
        scheduler="UniPCMultistepScheduler"))
    assert unipc.steps_estimated == DEFAULT_MAX_STEPS
    assert estimate_generation("tiny", "fp16", fifty, max_steps=3).steps_estimated == 3


@pytest.mark.parametrize("scheduler", [
    "UniPCMultistepScheduler",
    pytest.param("LMSDiscreteScheduler", marks=pytest.mark.skipif(
        importlib.util.find_spec("scipy") is None, reason="LMSDiscreteScheduler needs scipy")),
])
def test_the_generation_s_scheduler_is_used_and_its_history_fits_in_the_cap(
        scheduler: str) -> None:
    args = TINY_ARGS.with_overrides(scheduler=scheduler, num_inference_steps=DEFAULT_MAX_STEPS)
    capped = estimate_generation("tiny", "fp16", args)
    longer = estimate_generation("tiny", "fp16", args.with_overrides(num_inference_steps=8),
                                 max_steps=8)
    assert capped.args.scheduler == scheduler
    assert capped.estimated_allocated == longer.estimated_allocated
    # These schedulers keep previous model outputs on the device: more than DDIM (tiny's own).
    ddim = estimate_generation("tiny", "fp16", args.with_overrides(scheduler=None))
    assert capped.end_allocated > ddim.end_allocated


def test_the_safety_checker_can_be_left_out(tiny: dict[str, EstimateReport]) -> None:
    without = estimate_generation("tiny", "fp16", TINY_ARGS, safety_checker=False)
    assert "safety_checker" not in without.phase_peaks
    assert without.start_allocated < estimate_tiny(tiny, "fp16").start_allocated
    assert "no safety checker" in str(without)


def test_only_synthetic_models_can_be_built_on_meta() -> None:
    with pytest.raises(ModelError, match="sd15"):
        estimate_generation("runwayml/stable-diffusion-v1-5", "fp16", TINY_ARGS)


def test_the_estimate_leaves_no_state_behind() -> None:
    estimate_generation("tiny", "model_offload", TINY_ARGS)
    # The counting and attention modes are gone: meta SDPA takes the math path again.
    q = torch.empty(1, 1, 8, 8, device="meta")
    assert torch.nn.functional.scaled_dot_product_attention(q, q, q).shape == q.shape
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    assert not _get_current_function_mode_stack() and not _get_current_dispatch_mode_stack()
