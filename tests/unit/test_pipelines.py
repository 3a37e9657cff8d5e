"""Synthetic pipelines: real diffusers code, built offline, cached safely, loaded safely."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler
from transformers import CLIPImageProcessorPil

from pytest_sdmem.building import pipelines
from pytest_sdmem.building.pipelines import (
    DEFAULT_PROMPT,
    SD15_PARAMETER_COUNTS,
    SD15_TILE_THRESHOLD,
    TINY_TILE_THRESHOLD,
    ModelError,
    build_pipeline,
    build_tokenizer,
    cache_key,
    ensure_cached,
    load_pipeline,
)
from pytest_sdmem.building.pipelines import cache as cache_module
from pytest_sdmem.building.pipelines.cache import (
    MARKER_NAME,
    build_device,
    entry_name,
    is_complete,
)
from pytest_sdmem.building.pipelines.quiet import quiet_backend_fallbacks, quiet_progress_bars

PROJECT_ROOT = Path(pipelines.__file__).resolve().parents[2]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _generate(pipe, size: int = 64, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        DEFAULT_PROMPT,
        num_inference_steps=2,
        height=size,
        width=size,
        generator=generator,
        output_type="np",
    ).images


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _public(config: dict) -> dict:
    """A config without diffusers' bookkeeping keys (class name, version, defaults used)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the tiny entry (seed 0, no safety checker)."""
    cache_dir = tmp_path_factory.mktemp("sdmem-cache")
    ensure_cached("tiny", cache_dir)
    return cache_dir


# --- tiny ------------------------------------------------------------------------------------


def test_tiny_is_a_complete_pipeline_that_generates_finite_images() -> None:
    pipe = build_pipeline("tiny")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.safety_checker is None and not pipe.config.requires_safety_checker
    down_blocks = [type(b).__name__ for b in pipe.unet.down_blocks]
    assert "CrossAttnDownBlock2D" in down_blocks
    images = _generate(pipe)
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()
    assert images.std() > 0.01, "random weights should give a picture, not a flat image"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_tiny_is_finite_in_half_precision(tiny_cache: Path, dtype: torch.dtype) -> None:
    pipe = load_pipeline("tiny", dtype=dtype, cache_dir=tiny_cache)
    assert pipe.unet.dtype == dtype
    images = _generate(pipe)
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()


def test_same_seed_gives_same_weights_and_leaves_global_rng_alone() -> None:
    rng_before = torch.get_rng_state()
    first, second = build_pipeline("tiny", seed=3), build_pipeline("tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(first, name), getattr(second, name)), name
    other = build_pipeline("tiny", seed=4)
    assert not _same_weights(first.unet, other.unet)


def test_tokenizer_is_local_deterministic_and_clip_shaped() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    ids = tokenizer(DEFAULT_PROMPT, padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    words = DEFAULT_PROMPT.split()
    assert ids[: len(words) + 2] == [
        tokenizer.bos_token_id,
        *tokenizer.convert_tokens_to_ids([w + "</w>" for w in words]),
        tokenizer.eos_token_id,
    ]
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # CLIP's legacy pooling takes argmax
    assert tokenizer.decode(tokenizer("Zebra 42!").input_ids, skip_special_tokens=True)


def test_tile_thresholds_are_where_diffusers_switches_to_tiles() -> None:
    vae = build_pipeline("tiny").vae
    vae.enable_tiling()
    calls: list[tuple[int, ...]] = []
    original = vae.tiled_decode

    def spy(z: torch.Tensor, *args, **kwargs):
        calls.append(tuple(z.shape))
        return original(z, *args, **kwargs)

    vae.tiled_decode = spy
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, TINY_TILE_THRESHOLD // scale, TINY_TILE_THRESHOLD // scale))
        assert calls == []
        big = 2 * TINY_TILE_THRESHOLD // scale
        decoded = vae.decode(torch.randn(1, 4, big, big)).sample
    assert calls == [(1, 4, big, big)]
    assert decoded.shape == (1, 3, 2 * TINY_TILE_THRESHOLD, 2 * TINY_TILE_THRESHOLD)
    assert TINY_TILE_THRESHOLD == 64

    sd15_vae = build_pipeline("sd15", device="meta").vae
    assert SD15_TILE_THRESHOLD == sd15_vae.tile_sample_min_size == 512
    assert sd15_vae.tile_latent_min_size * 8 == SD15_TILE_THRESHOLD


# --- sd15 ------------------------------------------------------------------------------------


def test_sd15_has_the_exact_parameter_counts_without_materialising_weights() -> None:
    pipe = build_pipeline("sd15", device="meta")
    for name, expected in SD15_PARAMETER_COUNTS.items():
        module = getattr(pipe, name)
        assert _param_count(module) == expected, name
        assert {p.device.type for p in module.parameters()} == {"meta"}
    scheduler = pipe.scheduler
    assert isinstance(scheduler, PNDMScheduler)
    assert scheduler.config.beta_start == 0.00085 and scheduler.config.beta_end == 0.012
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.skip_prk_steps and scheduler.config.steps_offset == 1
    assert pipe.safety_checker is None


def test_sd15_safety_checker_is_clip_vit_l14_built_locally() -> None:
    pipe = build_pipeline("sd15", device="meta", safety_checker=True)
    vision = pipe.safety_checker.config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (1024, 24, 14)
    assert pipe.safety_checker.config.projection_dim == 768
    # CLIP ViT-L/14 vision tower + 768-d projection + the 17 + 3 concept embeddings.
    assert _param_count(pipe.safety_checker) == 303_981_588
    assert isinstance(pipe.feature_extractor, CLIPImageProcessorPil)
    assert pipe.feature_extractor.crop_size == {"height": 224, "width": 224}
    assert pipe.config.requires_safety_checker


# --- cache -----------------------------------------------------------------------------------


def test_save_and_reload_round_trip_is_exact(tiny_cache: Path) -> None:
    entry = ensure_cached("tiny", tiny_cache)
    assert (entry / MARKER_NAME).is_file()
    assert not list(entry.rglob("*.bin"))
    built = build_pipeline("tiny")
    loaded = load_pipeline("tiny", dtype=torch.float32, cache_dir=tiny_cache)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(built, name), getattr(loaded, name)), name
    assert loaded.tokenizer.get_vocab() == built.tokenizer.get_vocab()
    assert _public(loaded.scheduler.config) == _public(built.scheduler.config)
    np.testing.assert_array_equal(_generate(loaded), _generate(built))


def test_half_precision_loads_the_weights_a_cast_of_the_fp32_files_gives(
    tiny_cache: Path,
) -> None:
    """fp16 loads read the entry's fp16 variant files (no cast at load time): they must hold
    exactly the bytes of the fp32 weights cast to fp16, and a bf16 load still casts."""
    entry = ensure_cached("tiny", tiny_cache)
    assert (entry / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    full = load_pipeline("tiny", dtype=torch.float32, cache_dir=tiny_cache)
    for dtype in (torch.float16, torch.bfloat16):
        loaded = load_pipeline("tiny", dtype=dtype, cache_dir=tiny_cache)
        for name in ("unet", "vae", "text_encoder"):
            cast = {k: v.to(dtype) if v.is_floating_point() else v
                    for k, v in getattr(full, name).state_dict().items()}
            got = getattr(loaded, name).state_dict()
            assert cast.keys() == got.keys(), name
            assert all(torch.equal(cast[k], got[k]) and cast[k].dtype == got[k].dtype
                       for k in cast), (dtype, name)


def test_entry_depends_on_architecture_seed_and_checker() -> None:
    keys = {
        cache_key("tiny"),
        cache_key("tiny", seed=1),
        cache_key("tiny", safety_checker=True),
        cache_key("sd15"),
    }
    assert len(keys) == 4
    assert cache_key("tiny") == cache_key("tiny")


def test_a_cuda_build_is_its_own_entry_and_a_cpu_build_is_the_default(tiny_cache: Path) -> None:
    """A session's device picks the builder; CUDA's generator draws other weights than the
    CPU's for the same seed, so its entry has its own key and name, while the CPU's (the
    default builder) names no device. The device path is one: device="cpu" given explicitly
    builds the default entry, whose marker says where it was built and holds each file's
    SHA-256 (hashed in parallel)."""
    assert build_device("cuda:1") == torch.device("cuda:1")
    assert build_device("cpu") == build_device("mps") == torch.device("cpu")
    assert cache_key("tiny", built_on="cpu") == cache_key("tiny")
    assert cache_key("tiny", built_on="cuda") != cache_key("tiny")
    assert "-cuda-" in entry_name("sd15", safety_checker=True, built_on="cuda")
    assert "cuda" not in entry_name("sd15", safety_checker=True)

    entry = ensure_cached("tiny", tiny_cache, device="cpu")
    assert entry == ensure_cached("tiny", tiny_cache) == tiny_cache / entry_name("tiny")
    marker = json.loads((entry / MARKER_NAME).read_text())
    assert marker["built_on"] == "cpu" and marker["key"] == cache_key("tiny")
    for name, expected in marker["files"].items():
        assert hashlib.sha256((entry / name).read_bytes()).hexdigest() == expected["sha256"]


def test_safety_checker_entry_loads_with_the_checker(tiny_cache: Path) -> None:
    pipe = load_pipeline("tiny", dtype=torch.float32, cache_dir=tiny_cache, safety_checker=True)
    assert pipe.safety_checker is not None
    result = pipe(DEFAULT_PROMPT, num_inference_steps=2, output_type="np")
    assert result.nsfw_content_detected == [False]  # random weights never flag an image
    assert np.isfinite(result.images).all()


def test_reload_works_with_the_network_blocked(tiny_cache: Path) -> None:
    script = textwrap.dedent(
        """
        import socket, sys
        from pathlib import Path

        def blocked(*args, **kwargs):
            raise OSError("network access attempted while blocked")

        socket.socket.connect = socket.socket.connect_ex = blocked
        socket.create_connection = socket.getaddrinfo = blocked

        import numpy as np, torch
        from pytest_sdmem.building.pipelines import ModelError, load_pipeline
        from pytest_sdmem.building.pipelines import cache

        def no_rebuild(*args, **kwargs):
            raise AssertionError("the cached entry should have been loaded, not rebuilt")

        cache.build_pipeline = no_rebuild
        cache_dir = Path(sys.argv[1])
        pipe = load_pipeline("tiny", dtype=torch.float32, cache_dir=cache_dir)
        images = pipe("a photo", num_inference_steps=2, output_type="np").images
        assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
        try:
            load_pipeline("someone/not-cached", dtype=torch.float32, cache_dir=cache_dir)
        except ModelError as exc:
            assert "HF_HUB_OFFLINE" in str(exc), exc
        else:
            raise AssertionError("an uncached hub id loaded offline")
        print("offline-ok")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offline-ok" in done.stdout
    # A fresh process without torchvision: transformers' fallback notice is held back.
    if importlib.util.find_spec("torchvision") is None:
        assert "requires torchvision" not in done.stderr, done.stderr[-3000:]


def test_backend_fallback_notices_are_held_back_for_the_block_only() -> None:
    logger = logging.getLogger("transformers.utils.import_utils")
    before = logger.level
    with quiet_backend_fallbacks():
        assert not logger.isEnabledFor(logging.WARNING)
        assert logger.isEnabledFor(logging.ERROR)
    assert logger.level == before


def _copy_entry(tiny_cache: Path, target_dir: Path) -> Path:
    """A copy of the tiny entry under its own name in a fresh cache directory."""
    source = ensure_cached("tiny", tiny_cache)
    return Path(shutil.copytree(source, target_dir / source.name))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("damage", ["marker missing", "weights truncated"])
def test_interrupted_entry_is_rebuilt_not_used(
    tiny_cache: Path, tmp_path: Path, damage: str
) -> None:
    entry = _copy_entry(tiny_cache, tmp_path)
    full_size = (entry / UNET_WEIGHTS).stat().st_size
    _truncate(entry / UNET_WEIGHTS)
    if damage == "marker missing":
        (entry / MARKER_NAME).unlink()
    assert not is_complete(entry, cache_key("tiny"))

    assert ensure_cached("tiny", tmp_path) == entry
    assert is_complete(entry, cache_key("tiny"))
    assert (entry / UNET_WEIGHTS).stat().st_size == full_size
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [entry.name]
    loaded = load_pipeline("tiny", dtype=torch.float32, cache_dir=tmp_path)
    assert _same_weights(loaded.unet, build_pipeline("tiny").unet)


def test_leftover_temporary_directory_is_ignored_and_removed(
    tiny_cache: Path, tmp_path: Path
) -> None:
    name = entry_name("tiny")
    leftover = Path(shutil.copytree(ensure_cached("tiny", tiny_cache), tmp_path / f".tmp-{name}-x"))
    _truncate(leftover / UNET_WEIGHTS)  # a builder killed while writing
    users_dir = tmp_path / f"{name}-mine"  # looks similar, but is not one of ours
    users_dir.mkdir()

    entry = ensure_cached("tiny", tmp_path)
    assert entry == tmp_path / name and is_complete(entry, cache_key("tiny"))
    assert not leftover.exists()
    assert users_dir.is_dir()


def test_concurrent_builders_produce_one_complete_entry(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(ensure_cached, "tiny", tmp_path, seed=5) for _ in range(3)]
        results = [future.result() for future in futures]
    assert len(set(results)) == 1
    assert is_complete(results[0], cache_key("tiny", seed=5))
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == results[:1]


def test_losing_builder_keeps_the_winners_entry(tiny_cache: Path, tmp_path: Path) -> None:
    winner = _copy_entry(tiny_cache, tmp_path)
    loser = Path(shutil.copytree(winner, tmp_path / "loser"))
    winner_inode = (winner / UNET_WEIGHTS).stat().st_ino
    cache_module._publish(loser, winner, cache_key("tiny"))
    assert (winner / UNET_WEIGHTS).stat().st_ino == winner_inode


# --- external models -------------------------------------------------------------------------


def test_pickle_only_directory_is_refused(tiny_cache: Path, tmp_path: Path) -> None:
    model_dir = _copy_entry(tiny_cache, tmp_path)
    weights = model_dir / UNET_WEIGHTS
    torch.save({"conv_in.weight": torch.zeros(1)}, weights.with_suffix(".bin"))
    for safetensors in weights.parent.glob("*.safetensors"):  # the fp16 variant's too
        safetensors.unlink()
    with pytest.raises(ModelError, match="execute arbitrary code") as info:
        load_pipeline(str(model_dir), dtype=torch.float32, cache_dir=tmp_path)
    message = str(info.value)
    assert "unet/diffusion_pytorch_model.bin" in message
    assert "save_pretrained" in message and "safe_serialization=True" in message


def test_pickle_single_file_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, checkpoint)
    with pytest.raises(ModelError, match="pickle weights only"):
        load_pipeline(str(checkpoint), dtype=torch.float32, cache_dir=tmp_path)


def test_directory_with_safetensors_beside_pickle_loads(tiny_cache: Path, tmp_path: Path) -> None:
    model_dir = _copy_entry(tiny_cache, tmp_path)
    torch.save({}, model_dir / "unet" / "diffusion_pytorch_model.bin")
    pipe = load_pipeline(str(model_dir), dtype=torch.float32, cache_dir=tmp_path)
    assert _same_weights(pipe.unet, build_pipeline("tiny").unet)


def test_missing_path_gives_one_model_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelError, match="no such file or directory") as info:
        load_pipeline(str(missing), dtype=torch.float32, cache_dir=tmp_path)
    assert str(missing) in str(info.value)
    assert "tiny, sd15" in str(info.value)


def test_uncached_hub_id_offline_gives_one_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blocked(*args, **kwargs):
        raise AssertionError("network access attempted while HF_HUB_OFFLINE is set")

    monkeypatch.setattr("socket.socket.connect", blocked)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set") as info:
        load_pipeline("someone/not-a-model", dtype=torch.float32, cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, OSError)


def test_loading_prints_no_progress_bars(tiny_cache: Path, capfd: pytest.CaptureFixture) -> None:
    load_pipeline("tiny", dtype=torch.float32, cache_dir=tiny_cache)
    captured = capfd.readouterr()
    assert "Loading" not in captured.err + captured.out


def test_progress_bar_settings_are_restored() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_progress_bar()
    with quiet_progress_bars():
        assert not diffusers_logging.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled()
