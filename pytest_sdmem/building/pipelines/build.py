"""Synthetic pipelines built from the configs, with seeded random weights.

Modules are constructed on the CPU (or directly on the meta device, which allocates nothing
and is what the estimator uses) inside a forked, seeded torch RNG: the same seed gives the
same weights, and the caller's global RNG state is left as it was.

The libraries' default initialisation is kept, unscaled, because it already gives finite,
meaningful outputs: measured with diffusers 0.42 / torch 2.13 on the CPU, the largest module
output of ``sd15`` in fp16 (64x64, 2 steps) is about 18 (VAE decoder) and ``tiny``'s about 2,
far below fp16's 65504, and the images are neither flat nor saturated (pixel std about 0.16).
The tests keep checking ``tiny`` in fp32, fp16 and bf16.
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from pytest_sdmem.building.pipelines.configs import ModelSpec, get_spec
from pytest_sdmem.building.pipelines.tokenizer import build_tokenizer


def text_encoder_config(spec: ModelSpec, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """The text encoder's config, with its special token ids taken from the tokenizer.

    The vocabulary is the tokenizer's size unless the spec fixes it (``sd15`` keeps CLIP's
    49408 rows so that its parameter count is the real one).
    """
    fields = dict(spec.text_encoder)
    if fields["vocab_size"] is None:
        fields["vocab_size"] = len(tokenizer)
    return CLIPTextConfig(
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _safety_checker(spec: ModelSpec) -> StableDiffusionSafetyChecker:
    """SD's safety checker with random weights that never flags an image.

    It blanks an image when a cosine similarity exceeds a concept's threshold; thresholds of
    1.0 can never be exceeded, so outputs stay comparable while the checker still costs the
    real memory and time.
    """
    config = CLIPConfig(
        vision_config=spec.safety_checker_vision,
        projection_dim=spec.safety_checker_projection_dim,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(1.0)
        checker.special_care_embeds_weights.fill_(1.0)
    return checker


def build_components(
    spec: ModelSpec, *, seed: int = 0, device: str = "cpu", safety_checker: bool = False
) -> dict[str, Any]:
    """The pipeline's components, keyword arguments of ``StableDiffusionPipeline``.

    ``device`` "meta" builds without allocating weights (for parameter counts and the
    estimator); any other device builds on the CPU, where the seeded initialisation is the same
    on every machine, and then moves the models there.
    """
    tokenizer = build_tokenizer()
    build_device = "meta" if device == "meta" else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(build_device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
        text_encoder = CLIPTextModel(text_encoder_config(spec, tokenizer))
        checker = _safety_checker(spec) if safety_checker else None
    models = [unet, vae, text_encoder] + ([checker] if checker is not None else [])
    for model in models:
        model.eval()
        if device != build_device:
            model.to(device)
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler_class.from_config(spec.scheduler),
        "safety_checker": checker,
        "feature_extractor": (
            CLIPImageProcessorPil(**spec.feature_extractor) if safety_checker else None
        ),
        "requires_safety_checker": safety_checker,
    }


def build_pipeline(
    model: str, *, seed: int = 0, device: str = "cpu", safety_checker: bool = False
) -> StableDiffusionPipeline:
    """A synthetic ``StableDiffusionPipeline`` ("tiny" or "sd15") with seeded random weights.

    Progress bars are off: test output should show results, not a bar per generation.
    """
    spec = get_spec(model)
    pipe = StableDiffusionPipeline(
        **build_components(spec, seed=seed, device=device, safety_checker=safety_checker)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
