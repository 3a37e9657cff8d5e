"""Every family's tiny model through the real loading path (build, save_pretrained, cache,
from_pretrained with its family's pipeline class), the device-and-dtype build path of the
full-size models, the cache's disk-space check, and real models' pipeline class chosen from
their model_index.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from pytest_sdmem.building.pipelines import (
    DEFAULT_PROMPT,
    PARAMETER_COUNTS,
    TINY_MODELS,
    ModelError,
    build_pipeline,
    ensure_cached,
    get_spec,
    load_pipeline,
)
from pytest_sdmem.building.pipelines import cache as cache_module
from pytest_sdmem.building.pipelines.cache import entry_cost

FAMILY_TINIES = [TINY_MODELS[family] for family in ("sdxl", "sd3", "flux")]


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _generate(pipe, model: str) -> np.ndarray:
    """Two steps at 32x32 with the family's call arguments (no negative prompt for Flux)."""
    defaults = get_spec(model).defaults
    kwargs = {} if defaults.max_sequence_length is None else {"max_sequence_length": 32}
    return pipe(DEFAULT_PROMPT, num_inference_steps=2, height=32, width=32,
                guidance_scale=defaults.guidance_scale, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module")
def family_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache_dir = tmp_path_factory.mktemp("sdmem-families")
    for model in FAMILY_TINIES:
        ensure_cached(model, cache_dir)
    return cache_dir


@pytest.mark.parametrize("model", FAMILY_TINIES)
def test_cache_round_trip_loads_the_family_class_with_the_same_weights(
    model: str, family_cache: Path
) -> None:
    spec = get_spec(model)
    built = build_pipeline(model)
    loaded = load_pipeline(model, dtype=torch.float32, cache_dir=family_cache)
    assert type(loaded).__name__ == spec.pipeline_class
    assert _modules(loaded).keys() == _modules(built).keys() == spec.models.keys()
    for name, module in _modules(built).items():
        assert _same_weights(module, getattr(loaded, name)), name
    for name in spec.tokenizers:
        assert getattr(loaded, name).get_vocab() == getattr(built, name).get_vocab(), name
    images = _generate(loaded, model)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert images.std() > 0.01  # neither flat nor NaN-blanked
    # Same weights, same inputs; Flux's loaded transformer sums in another order (4e-7 apart).
    np.testing.assert_allclose(images, _generate(built, model), rtol=0, atol=1e-5)


def test_build_on_a_device_in_a_dtype_is_seeded_and_leaves_the_caller_alone() -> None:
    """The path full-size models take on a GPU, run here on the CPU with tiny-flux in its
    native bf16: every weight created in bf16 (no fp32 copy), the same seed the same weights,
    the caller's RNG and default dtype untouched."""
    rng_before, dtype_before = torch.get_rng_state(), torch.get_default_dtype()
    first = build_pipeline("tiny-flux", device="cpu", dtype=torch.bfloat16, seed=5)
    second = build_pipeline("tiny-flux", device="cpu", dtype=torch.bfloat16, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_default_dtype() == dtype_before
    for name, module in _modules(first).items():
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name
        assert _same_weights(module, getattr(second, name)), name
    assert np.isfinite(_generate(first, "tiny-flux")).all()


def test_full_size_uncached_model_on_a_cpu_is_refused_with_its_cost(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_pipeline("flux-dev", dtype=torch.bfloat16, cache_dir=tmp_path, device="cpu")
    message = str(info.value)
    assert "'tiny-flux'" in message and "--sdmem-estimate" in message
    assert f"{entry_cost('flux-dev').disk / 1e9:.0f}" in message.replace(",", "")  # ~101 GB
    assert not list(tmp_path.iterdir())


def test_entry_that_the_disk_cannot_hold_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cost = entry_cost("tiny-sd3")
    real = shutil.disk_usage(tmp_path)
    free = cost.disk - 1
    monkeypatch.setattr(cache_module.shutil, "disk_usage",
                        lambda path: real._replace(free=free))
    with pytest.raises(ModelError, match=r"'tiny-sd3' needs .* of disk .* free"):
        ensure_cached("tiny-sd3", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_entry_costs_are_six_bytes_per_weight_on_disk() -> None:
    sd15 = entry_cost("sd15")
    assert sd15.disk == 6 * sd15.elements
    assert 1_066_000_000 < sd15.elements < 1_067_000_000  # 859.5M + 83.7M + 123.1M
    # SD 3's positional embedding buffer is saved with its weights; T5's tied embedding once.
    sd3 = sum(PARAMETER_COUNTS["sd3"].values()) + 192 * 192 * 1536
    assert entry_cost("sd3").elements == sd3


def _as_hub_snapshot(source: Path, hub_cache: Path, repo_id: str) -> None:
    """Lay out ``source`` as the Hugging Face cache holds a downloaded repository."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_real_models_load_with_the_class_their_model_index_names(
    family_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ensure_cached("tiny-sdxl", family_cache)
    directory = tmp_path / "my-sdxl"
    shutil.copytree(entry, directory)
    pipe = load_pipeline(str(directory), dtype=torch.float32, cache_dir=tmp_path)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"

    hub_cache = tmp_path / "hub"
    _as_hub_snapshot(ensure_cached("tiny-flux", family_cache), hub_cache, "someone/tiny-flux")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline("someone/tiny-flux", dtype=torch.float32, cache_dir=tmp_path)
    assert type(pipe).__name__ == "FluxPipeline"

    index = directory / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()),
                                 "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelError, match=r"KandinskyPipeline.*StableDiffusionXLPipeline"):
        load_pipeline(str(directory), dtype=torch.float32, cache_dir=tmp_path)


def test_sdxl_in_fp16_decodes_in_fp32_as_its_vae_force_upcast_says(family_cache: Path) -> None:
    pipe = load_pipeline("tiny-sdxl", dtype=torch.float16, cache_dir=family_cache)
    assert pipe.vae.config.force_upcast
    decoded: list[tuple[torch.dtype, torch.dtype]] = []
    decode = pipe.vae.decode

    def spy(latents: torch.Tensor, *args, **kwargs):
        decoded.append((latents.dtype, pipe.vae.dtype))
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = spy
    images = _generate(pipe, "tiny-sdxl")
    assert decoded == [(torch.float32, torch.float32)]
    assert np.isfinite(images).all()
    assert pipe.vae.dtype == pipe.unet.dtype == torch.float16  # cast back after the decode
