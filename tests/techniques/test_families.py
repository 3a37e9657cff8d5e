"""Every model family in the technique suite: each tiny family (``tiny-sdxl``, ``tiny-sd3``,
``tiny-flux``: the classes and code paths of SDXL, SD 3 and Flux at a few MB) under every
technique the registry says applies to it (issue 15).

The session's ``--sdmem-model`` (``tiny``, SD 1.x) runs the other files of this suite; these
tests load each family themselves, on the session's device, so the CPU tier covers every family
in one run. Each technique must take effect (a switch that silently does nothing would pass an
image comparison) and keep the family's images: ``assert_matches_baseline`` against the
family's ``none``. The techniques go in as few sets as their conflicts allow (a pipeline costs
seconds on the CPU); what the device cannot run is skipped with the registry's reason; what
the family refuses is not generated here (the plugin's own tests check that it is skipped or
an error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from probes import COMPILE_ON_CPU_IS_TOO_SLOW, gpu_run  # noqa: F401 - gpu_run: the mark's condition

from pytest_sdmem.building.generation import generation_defaults
from pytest_sdmem.building.pipelines import TINY_MODELS, get_spec
from pytest_sdmem.building.runner import SdPipe, make_sd_pipe
from pytest_sdmem.building.techniques import (
    REGISTRY,
    Stage,
    TechniqueError,
    denoiser,
    parse_technique,
    unmet_requirements,
)
from pytest_sdmem.plugin.session import session_of

#: The families' tiny models besides the session's default (``tiny`` is SD 1.x's).
FAMILY_MODELS = tuple(model for family, model in TINY_MODELS.items() if family != "sd1")
#: One denoising step at 32x32: what is checked is that the technique takes effect and keeps
#: the images, which one step shows as well as many (the memory claims are the other files').
SIZE, STEPS = 32, 1


def _processors(pipe: Any) -> set[str]:
    """The attention processor classes of the models the attention techniques choose for."""
    models = [pipe.vae] + ([pipe.unet] if hasattr(pipe, "unet") else [])
    return {type(p).__name__ for m in models for p in m.attn_processors.values()}


def _offloaded(pipe: Any) -> bool:
    """Whether the denoiser's weights are kept off the device between calls."""
    return {p.device.type for p in denoiser(pipe).parameters()} != {"cuda"}


#: What each technique changes in the pipeline, checked right after it is applied.
EFFECTS: dict[str, Callable[[Any], bool]] = {
    "fp16": lambda pipe: denoiser(pipe).dtype == torch.float16,
    "bf16": lambda pipe: denoiser(pipe).dtype == torch.bfloat16,
    "sdpa": lambda pipe: _processors(pipe) == {"AttnProcessor2_0"},
    "attention_slicing": lambda pipe: "SlicedAttnProcessor" in _processors(pipe),
    "channels_last": lambda pipe: pipe.unet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last),
    "vae_slicing": lambda pipe: pipe.vae.use_slicing,
    "vae_tiling": lambda pipe: pipe.vae.use_tiling,
    "layerwise_casting": lambda pipe: all(
        torch.float8_e4m3fn in {p.dtype for p in model.parameters()}
        for model in (denoiser(pipe), pipe.vae)),
    "compile": lambda pipe: denoiser(pipe)._compiled_call_impl is not None,
    **{t.name: _offloaded for t in REGISTRY.values() if t.stage is Stage.PLACE},
}


def technique_sets(family: str) -> list[str]:
    """The techniques that apply to ``family``, in sets: the fp32 configuration techniques that
    need no CUDA device packed into as few sets as their conflicts allow (each into the first
    set it combines with), every other technique alone: a dtype (fp16 with layerwise casting is
    refused on SDXL's upcast VAE, tested apart), an offload, ``compile``, ``xformers``. The sets
    do not depend on the device, so a test's id is the same with and without ``--gpu``.

    One set stands for many techniques: each pipeline costs seconds on the CPU, and every
    technique in it is still checked for its own effect.
    """
    packed: list[list[str]] = []
    alone: list[str] = []
    for t in REGISTRY.values():
        if t.name == "none" or t.families.reason(family) is not None:
            continue
        if (t.stage is not Stage.CONFIGURE or t.dtype is not None or t.requires_cuda
                or t.requires_packages):
            alone.append(t.name)
            continue
        for names in packed:
            try:
                parse_technique("+".join([*names, t.name]))
            except TechniqueError:
                continue
            names.append(t.name)
            break
        else:
            packed.append([t.name])
    return [parse_technique("+".join(names)).expr for names in packed] + alone


#: In the GPU tier, a tiny family's set runs only where the CPU tier cannot: a technique that
#: needs CUDA, and ``compile``. Everything else is the same code on either device, and the GPU
#: tier's minutes go to the full-size models.
CPU_TIER_COVERS_IT = pytest.mark.skipif(
    "gpu_run(config)",
    reason="checked by the CPU tier (the same code path on either device); the GPU tier runs "
           "a tiny family's set only where the CPU cannot")

#: The one tiny family whose ``compile`` set is generated: Flux's transformer. A UNet's
#: compile is the guide table's row on SD 1.5, SD 3's transformer goes through the same
#: ``denoiser`` path as Flux's, and every family's warm-up at apply is a unit test
#: (tests/unit/test_techniques.py, eager backend).
COMPILED_FAMILY_MODEL = "tiny-flux"


def _cases(model: str) -> list[Any]:
    cases = []
    for expr in technique_sets(get_spec(model).family):
        if "compile" in expr:
            if model == COMPILED_FAMILY_MODEL:
                cases.append(pytest.param(model, expr, id=f"{model}-{expr}",
                                          marks=[COMPILE_ON_CPU_IS_TOO_SLOW]))
            continue
        needs_cuda = any(t.requires_cuda for t in parse_technique(expr).techniques)
        cases.append(pytest.param(model, expr, id=f"{model}-{expr}",
                                  marks=[] if needs_cuda else [CPU_TIER_COVERS_IT]))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The cases of ``test_tiny_family_takes_its_techniques``."""
    if "technique_set" in metafunc.fixturenames:
        metafunc.parametrize(("model", "technique_set"),
                             [case for model in FAMILY_MODELS for case in _cases(model)])


def family_pipe(request: pytest.FixtureRequest, model: str, technique: str) -> SdPipe:
    """``model`` with ``technique`` on the session's device, set up for one small
    generation."""
    settings = session_of(request.config).settings
    defaults = generation_defaults(model, steps=STEPS, size=SIZE)
    return make_sd_pipe(model, technique, settings.device, settings.cache_dir, defaults)


def test_tiny_family_takes_its_techniques(
    request: pytest.FixtureRequest, model: str, technique_set: str
) -> None:
    """Issue 15: every technique that applies to a family works on it. Applied, each changes
    what it says it changes, and the images stay those of the family's ``none`` within the
    set's tolerance (diffusers issues 11981 and 12673: an offload that drew another
    picture)."""
    settings = session_of(request.config).settings
    missing = unmet_requirements(parse_technique(technique_set), settings.device)
    if missing:
        pytest.skip("; ".join(missing))
    with family_pipe(request, model, technique_set) as sd:
        for t in sd.technique.techniques:
            if t.key in EFFECTS:  # xformers: its processors are chosen in diffusers' dispatch
                assert EFFECTS[t.key](sd.pipe), f"{t.name} did not take effect on {model}"
        sd.assert_matches_baseline("none")


def test_every_technique_of_the_cpu_tier_has_an_effect_check() -> None:
    """A technique added to the registry is checked for its effect, not only its images."""
    assert set(REGISTRY) - set(EFFECTS) == {"none", "xformers", "jit_trace"}


def test_sdxl_fp16_vae_decodes_in_fp16_with_force_upcast_off(
    request: pytest.FixtureRequest
) -> None:
    """SDXL's VAE is published with ``force_upcast``: in an fp16 pipeline,
    StableDiffusionXLPipeline casts it to fp32 for the decode and back after (its activations
    overflow fp16; tests/unit/test_model_families.py checks that case). A VAE whose config
    turns it off (an fp16-safe VAE) decodes in fp16, and the decode's memory with it."""
    with family_pipe(request, "tiny-sdxl", "fp16") as sd:
        vae = sd.pipe.vae
        vae.register_to_config(force_upcast=False)
        decoded: list[torch.dtype] = []
        hook = vae.decoder.register_forward_pre_hook(
            lambda module, args: decoded.append(args[0].dtype))
        try:
            sd()
        finally:
            hook.remove()
        assert decoded == [torch.float16]
        assert vae.dtype == torch.float16


def test_fp16_layerwise_casting_is_refused_on_sdxls_upcast_vae(
    request: pytest.FixtureRequest
) -> None:
    """SDXL's pipeline casts its force_upcast VAE to fp32 for the decode, where layerwise
    casting's hooks would compute in fp16 on fp32 inputs: a dtype error deep in the decode.
    The technique refuses the combination when it is applied, naming the way out."""
    with pytest.raises(TechniqueError, match=r"force_upcast.*Use bf16"):
        family_pipe(request, "tiny-sdxl", "fp16+layerwise_casting")


# --- GPU tier: the full-size families' published figures ---------------------------------
# Run with --gpu (or --sdmem-estimate) and --sdmem-model sd3, flux-dev or flux-schnell.
# diffusers' documentation publishes no memory figure for SDXL with these techniques: its
# full-size runs have the suite's relational tests, and no budget is made up for it.

#: diffusers' Flux docs, "Running FP16 inference": FLUX.1-schnell's example generation.
FLUX_LOW_VRAM_GENERATION = {"height": 768, "width": 1360, "num_inference_steps": 4,
                            "guidance_scale": 0.0, "max_sequence_length": 256}


@pytest.mark.gpu
@pytest.mark.sd_family("flux")
@pytest.mark.max_vram(budget="flux_sequential_offload_low_vram")
@pytest.mark.parametrize("sd_pipe", ["bf16+sequential_offload+vae_slicing+vae_tiling"],
                         indirect=True)
def test_flux_runs_on_a_4gb_gpu_with_sequential_offload(sd_pipe: SdPipe) -> None:
    """diffusers' Flux docs: with sequential CPU offload and the sliced and tiled VAE, Flux
    runs "on low vram GPUs (i.e. between 4 and 32 GB VRAM)" (budget
    ``flux_sequential_offload_low_vram``), at the example's 768x1360, 4 steps, no guidance and
    256 T5 tokens; bf16 has the bytes of the example's fp16 and is Flux's dtype."""
    images = sd_pipe(**FLUX_LOW_VRAM_GENERATION)
    assert images.shape == (1, 768, 1360, 3)


@pytest.mark.gpu
@pytest.mark.sd_family("flux")
@pytest.mark.max_vram(budget="flux_on_gpu")
@pytest.mark.parametrize("sd_pipe", ["bf16"], indirect=True)
def test_flux_on_the_gpu_fits_the_documented_50gb(sd_pipe: SdPipe) -> None:
    """diffusers' Flux docs, "Optimize": Flux "requires ~50GB of RAM/VRAM to load all the
    modeling components" (budget ``flux_on_gpu``): a bf16 generation at the model's defaults,
    fully on the GPU, stays within it. Two steps: flow matching keeps no history, so every step
    peaks alike, and the memory claim needs no more."""
    images = sd_pipe(num_inference_steps=2)
    assert images.shape[0] == 1


@pytest.mark.gpu
@pytest.mark.sd_family("sd3")
@pytest.mark.max_vram(budget="sd3_fp16_on_gpu")
@pytest.mark.parametrize("sd_pipe", ["fp16+sdpa"], indirect=True)
def test_sd3_in_fp16_fits_a_24gb_gpu(sd_pipe: SdPipe) -> None:
    """diffusers' SD 3 docs, "Memory Optimisations for SD3": with its three text encoders (one
    of them T5-XXL), SD 3 is "challenging to run ... on GPUs with less than 24GB of VRAM, even
    when using fp16 precision" (budget ``sd3_fp16_on_gpu``): an fp16 generation at the
    model's defaults, fully on the GPU, with diffusers' default SDPA processors. Two steps:
    flow matching keeps no history, so every step peaks alike."""
    images = sd_pipe(num_inference_steps=2)
    assert images.shape[0] == 1
