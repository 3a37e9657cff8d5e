"""SdPipe: seeded generations on the tiny pipeline, timing, the output guard and release."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_sdmem.base.units import format_duration
from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.building.pipelines import DEFAULT_PROMPT, ensure_cached
from pytest_sdmem.building.runner import (
    ImageDiff,
    SdPipe,
    UnmetRequirementError,
    compare_images,
    make_sd_pipe,
)
from pytest_sdmem.building.techniques import (
    SAME_MATH,
    ApplyContext,
    TechniqueError,
    parse_technique,
)
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import LatencySection
from pytest_sdmem.measuring.speedup import SpeedupResult
from pytest_sdmem.measuring.timing import ROUND_PARTS, TimingResult
from pytest_sdmem.report.table import COLUMNS, table_rows

DEFAULTS = GenerationArgs(num_inference_steps=2, height=32, width=32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    ensure_cached("tiny", cache)
    return cache


def _make(tiny_dir: Path, expr: str = "none") -> SdPipe:
    return make_sd_pipe("tiny", expr, "cpu", tiny_dir, DEFAULTS)


# --- GenerationArgs and compare_images ---------------------------------------------------------


def test_generation_args_defaults_are_the_guides() -> None:
    args = GenerationArgs()
    assert (args.prompt, args.num_inference_steps, args.height, args.width) == (
        DEFAULT_PROMPT, 50, 512, 512)
    assert (args.batch_size, args.seed, args.guidance_scale) == (1, 0, 7.5)
    assert str(args) == "1 image(s) 512x512, 50 steps, seed 0, guidance 7.5"


def test_unknown_override_is_a_type_error_listing_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown generation argument\(s\) steps: accepted "
                                        r"prompt, num_inference_steps, height"):
        DEFAULTS.with_overrides(steps=4)


def test_context_carries_the_shapes() -> None:
    ctx = DEFAULTS.with_overrides(batch_size=3, guidance_scale=1.0).context("cuda:1")
    assert ctx == ApplyContext(device="cuda:1", height=32, width=32, batch_size=3, steps=2,
                               guidance_scale=1.0)


def test_compare_images() -> None:
    a = np.zeros((1, 4, 4, 3), dtype=np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 0.5
    diff = compare_images(b, a, SAME_MATH)
    assert (diff.max_abs, diff.mean_abs) == (0.5, 0.5 / a.size)
    assert not diff.ok
    assert str(diff) == (
        "max abs diff 0.5 (tolerance 0.002), mean abs diff 0.0104 (tolerance 0.0002)"
    )
    assert compare_images(a, a, SAME_MATH).ok
    b[0, 0, 0, 0] = np.nan
    assert not compare_images(b, a, SAME_MATH).ok
    with pytest.raises(ValueError, match="cannot compare images of shape"):
        compare_images(a[:, :2], a, SAME_MATH)


# --- SdPipe on the tiny pipeline ---------------------------------------------------------------


def test_call_returns_seeded_images_of_the_asked_shape(tiny_dir: Path) -> None:
    with _make(tiny_dir) as sd:
        assert sd.technique == parse_technique("none")
        assert (sd.device, sd.last_args) == ("cpu", None)
        first = sd()
        assert first.shape == (1, 32, 32, 3)
        assert first.dtype == np.float32
        assert np.isfinite(first).all() and 0 <= first.min() <= first.max() <= 1
        assert sd.last_args == DEFAULTS
        np.testing.assert_array_equal(sd(), first)
        assert not np.array_equal(sd(seed=1), first)
        assert sd(batch_size=2, height=48).shape == (2, 48, 32, 3)
        assert sd.last_args == DEFAULTS.with_overrides(batch_size=2, height=48)
        with pytest.raises(TypeError, match="unknown generation argument"):
            sd(num_steps=1)


def test_assert_matches_baseline_passes_for_a_same_math_technique(tiny_dir: Path) -> None:
    with _make(tiny_dir, "vae_slicing") as sd:
        diff = sd.assert_matches_baseline(batch_size=2)
    assert isinstance(diff, ImageDiff) and diff.ok
    assert diff.tolerance == SAME_MATH


def test_assert_matches_baseline_uses_the_loosest_tolerance_of_both_sets(tiny_dir: Path) -> None:
    with _make(tiny_dir, "vae_slicing") as sd:
        diff = sd.assert_matches_baseline("fp16")
    assert diff.tolerance == parse_technique("fp16").output_tolerance


def test_assert_matches_baseline_compares_with_a_held_baseline_without_loading(
    tiny_dir: Path,
) -> None:
    """A test holding its baseline already (test_attention.py) passes it instead of its name:
    the comparison is the one a fresh load gives, and nothing is loaded (a handle without a
    loader cannot load)."""
    with _make(tiny_dir, "vae_slicing") as sd, _make(tiny_dir) as held:
        loaded = sd.assert_matches_baseline("none")
        bare = SdPipe(sd.pipe, "vae_slicing", "cpu", DEFAULTS)
        assert bare.assert_matches_baseline(held) == loaded


def test_assert_matches_baseline_fails_on_a_wrong_image(tiny_dir: Path) -> None:
    with _make(tiny_dir, "vae_slicing") as sd:
        with torch.no_grad():
            sd.pipe.unet.conv_out.weight.mul_(3)  # what a broken offload would do to the output
        with pytest.raises(AssertionError) as info:
            sd.assert_matches_baseline()
    message = str(info.value)
    assert message.startswith("images of 'vae_slicing' differ from baseline 'none': max abs diff")
    assert "(tolerance 0.002), mean abs diff" in message
    assert message.endswith("1 image(s) 32x32, 2 steps, seed 0, guidance 7.5")


def test_fresh_needs_a_loader(tiny_dir: Path) -> None:
    with _make(tiny_dir) as sd:
        bare = SdPipe(sd.pipe, "none", "cpu", DEFAULTS)
        assert bare.technique.expr == "none"
        with pytest.raises(RuntimeError, match="has no loader to build 'fp16'"):
            bare.assert_matches_baseline("fp16")


def test_traced_baseline_is_traced_for_the_generation(tiny_dir: Path) -> None:
    with _make(tiny_dir) as sd, sd.fresh("jit_trace", height=48) as traced:
        assert traced.defaults.height == 48
        assert traced.pipe.unet.sample_shape == (2, 4, 24, 16)
        assert np.isfinite(traced(height=48)).all()


def test_cuda_only_technique_is_refused_with_the_reasons(tiny_dir: Path) -> None:
    with pytest.raises(UnmetRequirementError) as info:
        _make(tiny_dir, "fp16+model_offload")
    assert info.value.reasons == ["model_offload needs a CUDA device: run with --gpu"]
    assert isinstance(info.value, TechniqueError)
    assert "technique 'fp16+model_offload' cannot run on cpu" in str(info.value)


def test_latency_is_measured_and_kept(tiny_dir: Path) -> None:
    with _make(tiny_dir) as sd:
        with pytest.raises(TypeError, match="unknown generation argument"):
            sd.latency(size=16)
        result = sd.latency(max_time=0.1, warmup=0, min_rounds=2, num_inference_steps=1)
    assert isinstance(result, TimingResult)
    assert result.rounds >= 2 and result.warmup == 0
    assert sd.last_latency is result
    assert sd.last_args is not None and sd.last_args.num_inference_steps == 1


def test_latency_is_broken_down_and_a_users_step_callback_still_runs(
        tiny_dir: Path, tmp_path: Path) -> None:
    """Load, the cold first call, and per measured round the steps, the text encoding and the
    VAE decode: disjoint parts of one generation, so within each round they add up to at most
    the round; the user's callback sees every step of every call, warm-up included."""
    steps_seen: list[int] = []

    def on_step_end(pipe: object, step: int, timestep: object, kwargs: dict) -> dict:
        assert isinstance(kwargs["latents"], torch.Tensor)
        steps_seen.append(step)
        return kwargs

    with _make(tiny_dir) as sd:
        result = sd.latency(max_time=0.1, warmup=1, min_rounds=3,
                            callback_on_step_end=on_step_end)
        # The pipeline's own methods are back: a later generation is not instrumented.
        assert "encode_prompt" not in vars(sd.pipe) and "decode" not in vars(sd.pipe.vae)
    steps = DEFAULTS.num_inference_steps
    assert steps_seen == [0, 1] * (1 + result.rounds)
    parts = result.breakdown
    assert parts is not None and parts.load is not None and parts.first_call is not None
    assert parts.load > 0 and parts.first_call > 0
    for name in ROUND_PARTS:
        part = getattr(parts, name)
        assert part is not None and len(part.times) == result.rounds, name
        assert min(part.times) > 0, name
    assert parts.per_step and parts.text_encoding and parts.vae_decode  # for the type checker
    for i, whole in enumerate(result.times):
        # with 2 steps, the round's median step is their mean
        assert (parts.per_step.times[i] * steps + parts.text_encoding.times[i]
                + parts.vae_decode.times[i]) <= whole
    assert parts.per_step.median * steps <= result.median
    assert max(parts.text_encoding.median, parts.vae_decode.median) < result.median

    # The record's latency section survives the results file, and the table shows the step.
    record = TestRecord(nodeid="t.py::test_latency", latency=LatencySection.of(result))
    read = RunResults.read(RunResults({}, [record]).write(tmp_path / "r.json")).results[0]
    assert read.latency is not None and read.latency.to_dict() == result.to_dict()
    assert read.latency.per_step == parts.per_step.median
    assert read.latency.load == parts.load and read.latency.first_call == parts.first_call
    cell = table_rows([read])[0].cells[COLUMNS.index("per step")]
    assert cell == format_duration(parts.per_step.median)


def test_speedup_over_a_baseline(tiny_dir: Path) -> None:
    with _make(tiny_dir) as sd:
        # A clear claim: settled in the first looks; the budget only has to hold them.
        result = sd.speedup_over("none", factor=100.0, max_time=30.0, num_inference_steps=1)
    assert isinstance(result, SpeedupResult)
    assert result.verdict == "fail"  # no technique is 100x faster than itself
    assert 3 <= result.pairs <= 10  # the t track from pair 3, the sign track from pair 10


def test_release_frees_the_pipeline(tiny_dir: Path) -> None:
    sd = _make(tiny_dir, "channels_last")
    unet = weakref.ref(sd.pipe.unet)
    sd()
    sd.release()
    gc.collect()
    assert sd.pipe is None and unet() is None
    assert repr(sd) == "SdPipe('channels_last', released)"
    sd.release()  # idempotent
    with pytest.raises(RuntimeError, match="the pipeline was released"):
        sd()


def test_a_scheduler_can_be_chosen_per_generation(tiny_dir: Path) -> None:
    sd = _make(tiny_dir)
    sd(scheduler="UniPCMultistepScheduler")
    assert type(sd.pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    with pytest.raises(TypeError, match=r"unknown scheduler 'Nope'.*DDIMScheduler"):
        sd(scheduler="Nope")
