"""The technique registry: parsing, requirements, and each technique applied to the tiny pipeline.

Every technique that can run on the CPU runs here on the real diffusers pipeline and must give
finite images that match the ``none`` baseline within its own tolerance; the others must name
what they miss. One tiny pipeline is built per module; each test loads a fresh copy from disk.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import warnings
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)
from torch._dynamo.utils import counters

from pytest_sdmem.building.noise import float32_noise
from pytest_sdmem.building.pipelines import TINY_TILE_THRESHOLD, ensure_cached, load_pipeline
from pytest_sdmem.building.techniques import (
    FAMILIES,
    PRESETS,
    REGISTRY,
    TILED,
    ApplyContext,
    Families,
    Stage,
    TechniqueError,
    TechniqueSet,
    TracedUNet,
    apply_techniques,
    cast_pipeline,
    denoiser,
    family_refusals,
    parse_technique,
    unmet_requirements,
)

SIZE = TINY_TILE_THRESHOLD  # the tiny VAE's natural size: the largest not tiled
#: For claims that hold at any size (how weights are stored, a batch decoded one image at a
#: time): every layer of the tiny pipeline runs, on a quarter of the pixels.
SMALL = SIZE // 2
STEPS = 2
CPU_TECHNIQUES = [t.name for t in REGISTRY.values() if not t.requires_cuda]
#: Checked against ``none`` by their own tests below, on the pipeline those tests load anyway:
#: tracing or compiling the UNet costs seconds, twice as many in two tests.
OWN_TEST = ("jit_trace", "compile")
CUDA_ONLY = [t.name for t in REGISTRY.values() if t.requires_cuda]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    ensure_cached("tiny", cache)
    return cache


def _load(tiny_dir: Path, expr: str, size: int = SIZE, batch_size: int = 1):
    ts = parse_technique(expr)
    ctx = ApplyContext(device="cpu", height=size, width=size, batch_size=batch_size, steps=STEPS)
    return apply_techniques(load_pipeline("tiny", dtype=ts.dtype, cache_dir=tiny_dir), ts, ctx)


def _generate(pipe, size: int = SIZE, batch_size: int = 1) -> np.ndarray:
    """The runner's protocol: one seed, and the same noise in every dtype."""
    generator = torch.Generator("cpu").manual_seed(0)
    with float32_noise():
        return pipe("a photo of an astronaut riding a horse on mars", num_inference_steps=STEPS,
                    height=size, width=size, num_images_per_prompt=batch_size,
                    generator=generator, output_type="np").images


@pytest.fixture(scope="module")
def baseline(tiny_dir: Path) -> np.ndarray:
    return _generate(_load(tiny_dir, "none"))


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["vae_slicing+fp16", "fp16+vae_slicing", "  vae_slicing +fp16 "])
def test_canonical_order_whatever_the_written_order(expr: str) -> None:
    ts = parse_technique(expr)
    assert ts.names == ("fp16", "vae_slicing")
    assert ts.expr == str(ts) == "fp16+vae_slicing"
    assert ts.dtype == torch.float16


def test_none_is_the_empty_fp32_set() -> None:
    ts = parse_technique(" none ")
    assert ts == TechniqueSet()
    assert (ts.names, ts.expr, ts.dtype) == ((), "none", torch.float32)
    assert ts.output_tolerance == REGISTRY["none"].output_tolerance


@pytest.mark.parametrize("expr", ["none+fp16", "fp16 + none", "none+none"])
def test_none_stands_alone(expr: str) -> None:
    with pytest.raises(TechniqueError, match="'none' means no technique and cannot be combined"):
        parse_technique(expr)


@pytest.mark.parametrize("expr", ["", "  ", "fp16+", "+fp16", "fp16++vae_slicing"])
def test_empty_names_are_errors(expr: str) -> None:
    with pytest.raises(TechniqueError, match="empty technique"):
        parse_technique(expr)


@pytest.mark.parametrize("expr", ["fp61", "FP16", "vae slicing", "fp16+vae-tiling", "seed:fp32",
                                  "xformers2", "fp16(", "attention_slicing(1"])
def test_unknown_names_list_every_technique_and_preset(expr: str) -> None:
    with pytest.raises(TechniqueError, match="unknown technique") as info:
        parse_technique(expr)
    message = str(info.value)
    for name in [*REGISTRY, *PRESETS]:
        assert name in message
    assert "attention_slicing(ARG)" in message


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(TechniqueError, match="did you mean 'vae_tiling'"):
        parse_technique("fp16+vae_tilling")


def test_not_a_string_is_an_error() -> None:
    with pytest.raises(TechniqueError, match="is a string"):
        parse_technique(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("fp16+fp16", "fp16 is listed twice in 'fp16\\+fp16': write it once"),
        ("seed:channels_last+fp16", "through preset seed:channels_last"),
        ("seed:fp16+seed:traced_unet", "through preset seed:fp16 and preset seed:traced_unet"),
        ("attention_slicing+attention_slicing(1)", "attention_slicing is listed twice"),
    ],
)
def test_duplicates_are_rejected_not_merged(expr: str, message: str) -> None:
    with pytest.raises(TechniqueError, match=message):
        parse_technique(expr)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("sequential_offload+model_offload", "remove_all_hooks"),
        ("model_offload+group_offload", "refuses group offloading"),
        ("group_offload+sequential_offload", "refuses group offloading"),
        ("attention_slicing+xformers", "issue 2053"),
        ("xformers+attention_slicing(1)", "issue 2053"),
        ("sdpa+attention_slicing", "silently replaces SDPA"),
        ("fp16+bf16", "one dtype"),
        ("xformers+sdpa", "silently replaces the other"),
        ("compile+jit_trace", "trace or compile"),
        ("jit_trace+layerwise_casting", "does not run module hooks"),
        ("model_offload+jit_trace", "does not run module hooks"),
        ("group_offload+vae_tiling", "first forward pass runs tiled"),
    ],
)
def test_conflicts_are_rejected_with_the_reason(expr: str, reason: str) -> None:
    with pytest.raises(TechniqueError, match=f"cannot combine {re.escape(repr(expr))}.*{reason}"):
        parse_technique(expr)


def test_every_conflict_is_reported() -> None:
    with pytest.raises(TechniqueError) as info:
        parse_technique("fp16+bf16+sdpa+xformers")
    assert "fp16 with bf16" in str(info.value)
    assert "sdpa with xformers" in str(info.value)


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        ("attention_slicing", "attention_slicing"),
        ("attention_slicing(auto)", "attention_slicing"),
        ("attention_slicing(1)", "attention_slicing(1)"),
        ("attention_slicing(max)", "attention_slicing(1)"),
        (" attention_slicing ( 2 ) ", "attention_slicing(2)"),
    ],
)
def test_attention_slicing_argument_is_canonical(expr: str, name: str) -> None:
    ts = parse_technique(expr)
    assert ts.names == (name,)
    assert parse_technique(ts.expr) == ts
    assert "attention_slicing" in ts


@pytest.mark.parametrize("argument", ["0", "-1", "1.5", "01", "x", "", "auto,1"])
def test_attention_slicing_argument_is_strict(argument: str) -> None:
    with pytest.raises(TechniqueError, match=r"invalid argument .* of attention_slicing: expected"):
        parse_technique(f"attention_slicing({argument})")


def test_techniques_without_parameter_take_no_argument() -> None:
    with pytest.raises(TechniqueError, match="fp16 takes no argument"):
        parse_technique("fp16(1)")


def test_presets_are_the_guides_cumulative_rows() -> None:
    rows = [parse_technique(name) for name in PRESETS]
    assert [ts.expr for ts in rows] == list(PRESETS)
    assert rows[0].names == ("fp16",)
    for previous, row in itertools.pairwise(rows):
        assert set(previous.names) < set(row.names)
    assert rows[-1].names == ("fp16", "sdpa", "channels_last", "jit_trace")
    assert [p.guide_speedup for p in PRESETS.values()] == [2.63, 2.88, 2.96, 3.61]


def test_a_preset_combined_is_named_by_its_techniques() -> None:
    ts = parse_technique("vae_slicing+seed:fp16")
    assert ts.expr == "fp16+vae_slicing"
    assert ts == parse_technique("fp16+vae_slicing")


@pytest.mark.parametrize("expr", [*REGISTRY, *PRESETS])
def test_expr_round_trips(expr: str) -> None:
    ts = parse_technique(expr)
    assert parse_technique(ts.expr) == ts
    assert ts.expr == expr


def test_registry_is_consistent() -> None:
    entries = list(REGISTRY.values())
    orders = [t.order for t in entries]
    assert len(set(orders)) == len(orders)
    by_order = sorted(entries, key=lambda t: t.order)
    assert [t.stage for t in by_order] == sorted(t.stage for t in by_order)
    for t in entries:
        assert t.summary and t.claim
        for conflict in t.conflicts:
            assert conflict.other in REGISTRY and conflict.other != t.name
            # declared on one side only, so that a conflict is reported once
            assert t.name not in {c.other for c in REGISTRY[conflict.other].conflicts}
        assert (t.stage is Stage.PLACE) == (t.name.endswith("_offload"))
    assert all(set(p.techniques) <= set(REGISTRY) for p in PRESETS.values())


def test_set_tolerance_is_the_loosest_of_its_techniques() -> None:
    ts = parse_technique("vae_slicing+vae_tiling+sdpa")
    assert ts.output_tolerance == TILED
    assert parse_technique("fp16").output_tolerance.mean_abs > REGISTRY["sdpa"].output_tolerance[1]


# --- requirements ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CUDA_ONLY)
def test_cuda_only_techniques_say_so_on_the_cpu(name: str) -> None:
    assert f"{name} needs a CUDA device: run with --gpu" in unmet_requirements(
        parse_technique(name), "cpu"
    )


@pytest.mark.parametrize("name", ["sequential_offload", "model_offload", "group_offload"])
def test_offloads_have_no_unmet_requirement_on_cuda(name: str) -> None:
    assert unmet_requirements(parse_technique(name), "cuda:0") == []


def test_requirement_reasons_are_exact() -> None:
    assert unmet_requirements(parse_technique("sequential_offload"), "cpu") == [
        "sequential_offload needs a CUDA device: run with --gpu"
    ]
    missing = replace(REGISTRY["xformers"], requires_packages=("no_such_package_sdmem",))
    assert unmet_requirements(TechniqueSet((missing,)), "cuda") == [
        "no_such_package_sdmem is not installed (pip install pytest-sdmem[no_such_package_sdmem])"
    ]
    future = replace(REGISTRY["sdpa"], min_torch="99.0")
    assert unmet_requirements(TechniqueSet((future,)), "cpu") == [
        f"sdpa needs torch >= 99.0, installed: {torch.__version__}"
    ]


def test_xformers_reasons_on_the_cpu() -> None:
    reasons = unmet_requirements(parse_technique("fp16+xformers"), "cpu")
    assert reasons[0] == "xformers needs a CUDA device: run with --gpu"
    try:
        import xformers  # noqa: F401
    except ImportError:
        assert reasons[1:] == ["xformers is not installed (pip install pytest-sdmem[xformers])"]


def test_compile_without_a_cpp_compiler_says_so() -> None:
    from torch._inductor import config

    # config.patch, not monkeypatch: undoing a monkeypatch on inductor's config proxy can
    # delete the entry (seen with pytest 9.2), breaking every later compile in the process.
    with config.patch({"cpp.cxx": ("no-such-compiler-sdmem++",)}):
        reasons = unmet_requirements(parse_technique("compile"), "cpu")
    assert reasons == [
        "compile on the CPU needs a C++ compiler for torch inductor: install g++ or point CXX "
        "at one"
    ]


# --- applying ----------------------------------------------------------------------------------


def _recorder(log: list[str], name: str):
    def apply(pipe, ctx) -> None:
        log.append(name)

    return apply


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("compile+vae_tiling+bf16+channels_last",
         ["bf16", "channels_last", "vae_tiling", "to(cpu)", "compile"]),
        ("compile+sequential_offload+fp16", ["fp16", "sequential_offload", "compile"]),
        ("group_offload+layerwise_casting", ["layerwise_casting", "group_offload"]),
    ],
)
def test_apply_order_and_placement(expr: str, expected: list[str]) -> None:
    log: list[str] = []
    ts = parse_technique(expr)
    fake = TechniqueSet(tuple(replace(t, apply=_recorder(log, t.name)) for t in ts.techniques))
    pipe = mock.MagicMock()
    pipe.to.side_effect = lambda device, **kw: log.append(f"to({device})")
    assert apply_techniques(pipe, fake, ApplyContext(device="cpu")) is pipe
    assert log == expected


def test_baseline_attention_unless_the_set_chooses_one() -> None:
    pipe = mock.MagicMock()
    apply_techniques(pipe, parse_technique("fp16"), ApplyContext())
    pipe.unet.set_default_attn_processor.assert_called_once_with()
    pipe.vae.set_default_attn_processor.assert_called_once_with()
    pipe = mock.MagicMock()
    apply_techniques(pipe, parse_technique("sdpa"), ApplyContext())
    pipe.unet.set_default_attn_processor.assert_not_called()


@pytest.fixture
def eager_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile with the eager backend: dynamo captures the UNet as for real, but inductor's
    C++ code generation (about a minute on a 2-core CPU with a cold cache) is left to the
    technique suite."""
    monkeypatch.setattr(torch.nn.Module, "compile",
                        functools.partialmethod(torch.nn.Module.compile, backend="eager"))


def _assert_matches_none(name: str, images: np.ndarray, baseline: np.ndarray) -> None:
    """``images`` of technique ``name``, generated with ``_generate``, are finite images within
    the technique's tolerance of the ``none`` baseline."""
    ts = parse_technique(name)
    assert unmet_requirements(ts, "cpu") == []
    assert images.shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    diff = np.abs(images.astype(np.float64) - baseline)
    assert diff.max() <= ts.output_tolerance.max_abs
    assert diff.mean() <= ts.output_tolerance.mean_abs


def test_a_cast_logs_no_empty_float32_notice(
    tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """diffusers logs "modules ... that should be kept in float32: []" for every model cast;
    with no such module it is noise printed twice per fp16 test."""
    pipe = load_pipeline("tiny", dtype=torch.float32, cache_dir=tiny_dir)
    with caplog.at_level(logging.INFO, logger="diffusers"):
        cast_pipeline(pipe, torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == torch.float16
    assert not [r for r in caplog.records if "kept in float32" in r.getMessage()]


def test_the_techniques_left_to_their_own_tests_are_cpu_techniques() -> None:
    """A renamed technique cannot drop out of the check against ``none`` unnoticed."""
    assert set(OWN_TEST) <= set(CPU_TECHNIQUES)


@pytest.mark.parametrize("name", [n for n in CPU_TECHNIQUES if n not in OWN_TEST])
def test_technique_runs_on_the_cpu_and_matches_none(
    name: str, tiny_dir: Path, baseline: np.ndarray
) -> None:
    _assert_matches_none(name, _generate(_load(tiny_dir, name)), baseline)


def test_classic_and_sdpa_processors(tiny_dir: Path) -> None:
    for expr, processor in (("none", AttnProcessor), ("sdpa", AttnProcessor2_0)):
        pipe = _load(tiny_dir, expr)
        for model in (pipe.unet, pipe.vae):
            assert {type(p) for p in model.attn_processors.values()} == {processor}
    pipe = _load(tiny_dir, "attention_slicing(1)")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {SlicedAttnProcessor}
    assert {p.slice_size for p in pipe.unet.attn_processors.values()} == {1}


def test_channels_last_strides_as_the_guide_prints(tiny_dir: Path) -> None:
    # The guide's SD 1.5 conv_out (4 x 320 x 3 x 3), on the meta device: no memory.
    sd = torch.empty(4, 320, 3, 3, device="meta")
    assert sd.stride() == (2880, 9, 3, 1)
    assert sd.to(memory_format=torch.channels_last).stride() == (2880, 1, 960, 320)
    # The tiny UNet's conv_out is 4 x 32 x 3 x 3: the same layout, channel stride 1.
    assert _load(tiny_dir, "none").unet.conv_out.weight.stride() == (288, 9, 3, 1)
    weight = _load(tiny_dir, "channels_last").unet.conv_out.weight
    assert weight.shape == (4, 32, 3, 3)
    assert weight.stride() == (288, 1, 96, 32)


def test_vae_slicing_images_equal_unsliced(tiny_dir: Path) -> None:
    """At ``SMALL``: slicing splits the batch, not the image, so the size does not matter."""
    pipe = _load(tiny_dir, "vae_slicing", size=SMALL, batch_size=2)
    assert pipe.vae.use_slicing
    sliced = _generate(pipe, size=SMALL, batch_size=2)
    unsliced = _generate(_load(tiny_dir, "none", size=SMALL, batch_size=2), size=SMALL,
                         batch_size=2)
    np.testing.assert_allclose(sliced, unsliced, atol=1e-5, rtol=0)


def test_vae_tiling_engages_above_the_threshold_and_stays_close(tiny_dir: Path) -> None:
    size = TINY_TILE_THRESHOLD + 32  # latents of 48x48: above the 32x32 latent tile
    tiled = _generate(_load(tiny_dir, "vae_tiling", size=size), size=size)
    untiled = _generate(_load(tiny_dir, "none", size=size), size=size)
    diff = np.abs(tiled.astype(np.float64) - untiled)
    assert diff.max() > 1e-3, "tiling did not engage"
    assert diff.max() <= TILED.max_abs and diff.mean() <= TILED.mean_abs


def test_layerwise_casting_stores_fp8_and_computes_in_the_pipeline_dtype(tiny_dir: Path) -> None:
    """At ``SMALL``: the stored dtypes do not depend on the size, and the generation runs every
    layer in fp16 on the fp8 weights (half precision on the CPU is slow: seconds per step)."""
    pipe = _load(tiny_dir, "fp16+layerwise_casting", size=SMALL)
    for model in (pipe.unet, pipe.vae):
        dtypes = {p.dtype for p in model.parameters()}
        assert torch.float8_e4m3fn in dtypes
        assert dtypes <= {torch.float8_e4m3fn, torch.float16}  # norms are skipped
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.float16}
    assert np.isfinite(_generate(pipe, size=SMALL)).all()


def test_jit_trace_keeps_what_the_pipeline_reads_and_refuses_other_shapes(
    tiny_dir: Path, baseline: np.ndarray
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation and tracer warnings are handled
        pipe = _load(tiny_dir, "jit_trace")
    assert isinstance(pipe.unet, TracedUNet)
    assert pipe.unet.config.in_channels == 4
    assert (pipe.unet.dtype, pipe.unet.device) == (torch.float32, torch.device("cpu"))
    assert pipe.unet.sample_shape == (2, 4, SIZE // 2, SIZE // 2)  # batch doubled by guidance
    _assert_matches_none("jit_trace", _generate(pipe), baseline)
    with pytest.raises(ValueError, match="jit_trace traced the UNet for latents"):
        _generate(pipe, size=SIZE // 2)


def test_compile_compiles_at_apply_not_in_the_first_generation(
    tiny_dir: Path, baseline: np.ndarray, eager_compile: None
) -> None:
    pipe = _load(tiny_dir, "compile")
    graphs = counters["stats"]["unique_graphs"]
    images = _generate(pipe)
    assert counters["stats"]["unique_graphs"] == graphs
    _assert_matches_none("compile", images, baseline)


# SDXL's UNet with its added conditioning and Flux's transformer; SD 3's transformer takes the
# same path (checked once by hand, left out for the suite's time).
@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_compile_warms_each_familys_denoiser_up_at_apply(
    model: str, model_cache: Path, eager_compile: None
) -> None:
    """``compile`` acts on the denoiser, UNet or transformer, and its warm-up is a short
    generation of the pipeline itself, so each family's own arguments (SDXL's added
    conditioning, Flux's guidance and position ids) are compiled at apply: the generation
    compiles nothing more, and draws the eager images."""
    from pytest_sdmem.building.generation import generation_defaults
    from pytest_sdmem.building.runner import make_sd_pipe

    args = generation_defaults(model, steps=1, size=32)
    with make_sd_pipe(model, "compile", "cpu", model_cache, args) as compiled:
        graphs = counters["stats"]["unique_graphs"]
        assert denoiser(compiled.pipe)._compiled_call_impl is not None
        images = compiled()
        assert counters["stats"]["unique_graphs"] == graphs
        with compiled.fresh("none") as eager:
            np.testing.assert_allclose(images, eager(), atol=1e-5, rtol=0)


def test_the_families_are_the_catalogues() -> None:
    from pytest_sdmem.building.pipelines import FAMILIES as CATALOGUE

    assert FAMILIES == CATALOGUE
    with pytest.raises(ValueError, match="unknown families"):
        Families.refusing({"sd4": "no such family"})


@pytest.mark.parametrize(("expr", "family", "refused"), [
    ("fp16+vae_slicing", "flux", ["fp16"]),
    ("attention_slicing+channels_last", "sd3", ["attention_slicing", "channels_last"]),
    ("jit_trace", "sdxl", ["jit_trace"]),
    ("fp16+channels_last+jit_trace", "sd2", []),
    ("bf16+layerwise_casting+group_offload+compile", "flux", []),
])
def test_family_refusals_name_each_technique_with_its_reason(
    expr: str, family: str, refused: list[str]
) -> None:
    reasons = family_refusals(parse_technique(expr), family)
    assert [r.split()[0] for r in reasons] == refused
    for name, reason in zip(refused, reasons, strict=True):
        assert reason == (f"{name} does not apply to {family} models: "
                          f"{REGISTRY[name].families.reason(family)}")


def test_the_runner_refuses_a_technique_of_another_family_before_loading(
    model_cache: Path
) -> None:
    from pytest_sdmem.building.runner import make_sd_pipe

    with pytest.raises(TechniqueError, match=r"fp16 does not apply to flux models: .*bf16"):
        make_sd_pipe("tiny-flux", "fp16", "cpu", model_cache)
