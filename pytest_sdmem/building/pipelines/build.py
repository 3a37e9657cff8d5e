"""Synthetic pipelines built from the catalogue, with seeded random weights.

Modules are constructed directly where they will live, in the dtype they will run in: on the
meta device (which allocates nothing; parameter counts and the estimator), on the CPU for the
cache, or on a GPU, where a full-size model is initialised in its own dtype in seconds instead
of an fp32 CPU initialisation followed by a copy. Construction runs inside a forked, seeded
torch RNG of that device: the same seed gives the same weights on the CPU in the same dtype,
and on CUDA on the same GPU model (torch's CUDA random kernels size their grids by the SM
count, so another model may draw other numbers; pipelines/cache.py keeps CPU and CUDA builds
apart); the caller's global RNG state is left as it was.

The libraries' default initialisation is kept, unscaled, because it already gives finite,
meaningful outputs: measured with diffusers 0.42 / torch 2.13 on the CPU, the largest module
output of ``sd15`` in fp16 (64x64, 2 steps) is about 18 (VAE decoder) and ``tiny``'s about 2,
far below fp16's 65504, and the images are neither flat nor saturated (pixel std about 0.16).
The tests keep checking ``tiny`` in fp32, fp16 and bf16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessorPil, PreTrainedTokenizerBase

from pytest_sdmem.building.pipelines.configs import Component, ModelSpec, get_spec
from pytest_sdmem.building.pipelines.tokenizer import build_named_tokenizer

#: The transformers config class of each text encoder class of the catalogue.
_TEXT_CONFIGS: dict[str, str] = {
    "CLIPTextModel": "CLIPTextConfig",
    "CLIPTextModelWithProjection": "CLIPTextConfig",
    "T5EncoderModel": "T5Config",
}


def text_encoder_config(component: Component, tokenizer: PreTrainedTokenizerBase) -> Any:
    """A text encoder's transformers config, with its special token ids from the tokenizer.

    The vocabulary is the tokenizer's size unless the component fixes it (full-size models keep
    the real 49408 CLIP or 32128 T5 rows so that their parameter counts are the real ones).
    """
    fields = dict(component.config)
    if fields["vocab_size"] is None:
        fields["vocab_size"] = len(tokenizer)
    config_class = getattr(transformers, _TEXT_CONFIGS[component.class_name])
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if tokenizer.bos_token_id is not None:
        special["bos_token_id"] = tokenizer.bos_token_id
    return config_class(**fields, **special)


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


@contextmanager
def _seeded_on(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Construct modules on ``device`` in ``dtype``, from ``seed``, leaving the caller's RNG
    state and default dtype as they were."""
    devices = [device] if device.type == "cuda" else []
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _text_encoder_tokenizer(name: str) -> str:
    """The tokenizer keyword paired with a text encoder keyword (``text_encoder_2`` ->
    ``tokenizer_2``), as every diffusers pipeline of the catalogue names them."""
    return name.replace("text_encoder", "tokenizer")


def _model(component: Component, tokenizer: PreTrainedTokenizerBase | None) -> torch.nn.Module:
    if component.class_name in _TEXT_CONFIGS:
        assert tokenizer is not None
        return getattr(transformers, component.class_name)(
            text_encoder_config(component, tokenizer)
        )
    return getattr(diffusers, component.class_name)(**component.config)


def build_components(
    spec: ModelSpec,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    safety_checker: bool = False,
) -> dict[str, Any]:
    """The pipeline's components, keyword arguments of ``spec.pipeline_class``.

    Every model is built on ``device`` in ``dtype`` (see the module docstring); "meta"
    allocates nothing. ``safety_checker`` adds SD 1.x's checker; models that ship none (SD 2.1,
    SDXL, SD 3, Flux) have none either way.
    """
    device = torch.device(device)
    tokenizers = {name: build_named_tokenizer(kind) for name, kind in spec.tokenizers.items()}
    checker: StableDiffusionSafetyChecker | None = None
    with _seeded_on(device, dtype, seed):
        models = {
            name: _model(component, tokenizers.get(_text_encoder_tokenizer(name)))
            for name, component in spec.models.items()
        }
        if safety_checker and spec.has_safety_checker:
            checker = _safety_checker(spec)
    for model in [*models.values(), checker]:
        if model is not None:
            model.eval()
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    components: dict[str, Any] = {
        **models,
        **tokenizers,
        "scheduler": scheduler_class.from_config(spec.scheduler),
    }
    if spec.pipeline_class == "StableDiffusionPipeline":
        with_checker = checker is not None
        components.update(
            safety_checker=checker,
            feature_extractor=(
                CLIPImageProcessorPil(**spec.feature_extractor) if with_checker else None
            ),
            requires_safety_checker=with_checker,
        )
    return components


def build_pipeline(
    model: str,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    safety_checker: bool = False,
) -> DiffusionPipeline:
    """A synthetic pipeline of the catalogue (its ``pipeline_class``) with seeded random
    weights, built on ``device`` in ``dtype``.

    Progress bars are off: test output should show results, not a bar per generation.
    """
    spec = get_spec(model)
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    pipe = pipeline_class(
        **build_components(spec, seed=seed, device=device, dtype=dtype,
                           safety_checker=safety_checker)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
