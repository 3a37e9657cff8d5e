"""The model catalogue: every full-size model has the real architecture's exact parameter
counts (built on the meta device: nothing allocated), every family has a tiny variant of the
same classes, and the family defaults are diffusers'."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from pytest_sdmem.building.pipelines import (
    DEFAULT_PROMPT,
    FAMILIES,
    PARAMETER_COUNTS,
    SYNTHETIC_MODELS,
    TINY_MODELS,
    ModelError,
    build_pipeline,
    build_t5_tokenizer,
    get_spec,
)


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("model", list(PARAMETER_COUNTS))
def test_full_size_models_have_the_real_parameter_counts_on_meta(model: str) -> None:
    pipe = build_pipeline(model, device="meta")
    spec = get_spec(model)
    assert type(pipe).__name__ == spec.pipeline_class
    modules = {name: value for name, value in pipe.components.items()
               if isinstance(value, torch.nn.Module)}
    counts = {name: _param_count(module) for name, module in modules.items()}
    assert counts == PARAMETER_COUNTS[model]
    for module in modules.values():
        assert {p.device.type for p in module.parameters()} == {"meta"}


def test_every_family_has_a_tiny_variant_of_the_same_classes() -> None:
    full = {"sd1": "sd15", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux-dev"}
    assert set(TINY_MODELS) | {"sd2"} == set(FAMILIES)
    for family, tiny_name in TINY_MODELS.items():
        tiny, real = get_spec(tiny_name), get_spec(full[family])
        assert (tiny.family, tiny.pipeline_class) == (real.family, real.pipeline_class)
        if family != "sd1":  # tiny keeps the DDIM scheduler it always had
            assert tiny.scheduler == real.scheduler and tiny.scheduler_class == real.scheduler_class
        assert {k: c.class_name for k, c in tiny.models.items()} == {
            k: c.class_name for k, c in real.models.items()}
        assert tiny.tokenizers == real.tokenizers
        assert tiny.dtype == real.dtype


def test_family_defaults_are_the_pipelines_own() -> None:
    """Steps, guidance and T5 length as the diffusers pipeline's ``__call__`` defaults them;
    the size is its default_sample_size times the VAE's scale (FLUX.1-schnell's defaults are
    its model card's: the pipeline's are FLUX.1-dev's)."""
    for name in ("sd15", "sd21", "sd21-base", "sdxl", "sd3", "flux-dev"):
        spec = get_spec(name)
        call = inspect.signature(getattr(diffusers, spec.pipeline_class).__call__).parameters
        d = spec.defaults
        assert call["num_inference_steps"].default == d.num_inference_steps, name
        assert call["guidance_scale"].default == d.guidance_scale, name
        if d.max_sequence_length is not None:
            assert call["max_sequence_length"].default == d.max_sequence_length, name
        denoiser = spec.models[spec.denoiser].config
        scale = 2 ** (len(spec.vae["block_out_channels"]) - 1)
        sample = denoiser.get("sample_size", 128)  # Flux's pipeline: default_sample_size 128
        assert d.height == d.width == sample * scale, name
    schnell = get_spec("flux-schnell").defaults
    assert (schnell.num_inference_steps, schnell.guidance_scale,
            schnell.max_sequence_length) == (4, 0.0, 256)
    assert not get_spec("flux-dev").defaults.negative_prompt
    assert get_spec("sd21").scheduler["prediction_type"] == "v_prediction"
    assert get_spec("sdxl").vae["force_upcast"]


def test_t5_tokenizer_is_local_deterministic_and_t5_shaped() -> None:
    tokenizer = build_t5_tokenizer()
    assert tokenizer.get_vocab() == build_t5_tokenizer().get_vocab()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer(DEFAULT_PROMPT, padding="max_length", max_length=16).input_ids
    words = DEFAULT_PROMPT.split()
    assert ids[: len(words) + 1] == [
        *tokenizer.convert_tokens_to_ids(["\u2581" + w for w in words]), tokenizer.eos_token_id]
    assert ids[len(words) + 1:] == [tokenizer.pad_token_id] * (16 - len(words) - 1)
    assert tokenizer.decode(tokenizer("Zebra 42!").input_ids, skip_special_tokens=True)


def test_unknown_model_names_every_accepted_one() -> None:
    with pytest.raises(ModelError) as info:
        get_spec("sd4")
    assert all(name in str(info.value) for name in SYNTHETIC_MODELS)
