"""The memory/speed techniques of the diffusers memory guide, one registry entry each.

A test names its technique as an expression such as ``"fp16+vae_slicing"``; :func:`parse_technique`
turns it into a :class:`TechniqueSet` (strictly: an unknown name, a duplicate or a combination that
cannot work is an error at collection, never a silently different pipeline), and
:func:`apply_techniques` switches the set on in a fixed order, the way diffusers 0.42 wants it.

Every set starts from the guide's "original": fp32 weights (unless ``fp16``/``bf16``) and the
classic attention processor that materialises the whole attention matrix (unless ``sdpa`` or
``xformers`` chooses another). Today's diffusers defaults to PyTorch SDPA, so without that
baseline step ``none`` would already contain the memory-efficient attention whose gain the
guide's table measures, and ``fp16`` would not be comparable with ``none``.

Adding a technique is adding one :class:`Technique` to ``_ENTRIES``: its apply function, its
requirements, its conflicts (with the reason), its output tolerance and the claim it carries.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import shutil
import sys
import sysconfig
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from packaging.version import Version

from pytest_sdmem.base.errors import TechniqueError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    Pipe = StableDiffusionPipeline
else:
    Pipe = Any


class Stage(IntEnum):
    """When a technique is applied relative to moving the pipeline to its device.

    ``CONFIGURE`` changes the models in place and does not care where they are. ``PLACE`` is the
    offload modes, which decide placement themselves: the pipeline must *not* be moved to CUDA
    before them (diffusers issue 1934: sequential offload after ``.to("cuda")`` saved almost
    nothing), so a set with one of them is never moved. ``WRAP`` replaces or compiles the UNet's
    forward and must see the final weights, dtype and device.
    """

    CONFIGURE = 1
    PLACE = 2
    WRAP = 3


class OutputTolerance(NamedTuple):
    """How far a technique's images may be from its baseline's, in [0, 1] image space.

    Both bounds must hold. The mean catches a wrong picture (a broken offload gives noise, a mean
    difference of tenths); the max bounds local damage such as a seam between VAE tiles.
    """

    max_abs: float
    mean_abs: float

    def loosest(self, other: OutputTolerance) -> OutputTolerance:
        """The tolerance that allows what either allows: a set is as loose as its loosest part."""
        return OutputTolerance(max(self.max_abs, other.max_abs),
                               max(self.mean_abs, other.mean_abs))


# Tolerance tiers. On the tiny pipeline (CPU, 64x64, 2 and 10 steps) same-math techniques differ
# from ``none`` by < 1e-5 and the others by the figures in the comments; the tiers leave wide
# headroom for SD 1.5 over 50 steps on CUDA, where they are not calibrated yet, and stay well
# below a wrong image (noise or a broken offload: mean differences of tenths).
#: Same kernels, same order: only nondeterminism of the device can differ.
SAME_MATH = OutputTolerance(max_abs=2e-3, mean_abs=2e-4)
#: Same math, other kernels or summation order (sliced, fused, traced, compiled attention).
REORDERED = OutputTolerance(max_abs=2e-2, mean_abs=2e-3)
#: fp16 weights and activations (tiny: max 4.0e-3, mean 6.3e-4).
HALF = OutputTolerance(max_abs=0.3, mean_abs=0.03)
#: bf16: 3 fewer mantissa bits than fp16 (tiny: max 3.0e-2, mean 4.6e-3).
BFLOAT = OutputTolerance(max_abs=0.4, mean_abs=0.05)
#: fp8 e4m3 weight storage (tiny: max 6.0e-2, mean 1.0e-2).
FP8_STORAGE = OutputTolerance(max_abs=0.5, mean_abs=0.08)
#: Tiles decoded apart and blended, so tone may change between tiles (tiny at 96x96: max 4.7e-2,
#: mean 4.9e-3; at 128x128: max 0.11, mean 8.6e-3).
TILED = OutputTolerance(max_abs=0.35, mean_abs=0.04)


@dataclass(frozen=True)
class ApplyContext:
    """What a technique may need to know about the generation it is set up for.

    ``jit_trace`` traces the UNet with inputs of exactly these shapes (batch doubled when
    ``guidance_scale > 1``, as the pipeline then runs the unconditional batch alongside), and
    ``compile`` warms up on them, so that compiling is not part of the first measured call;
    ``steps`` gives them the schedule's timesteps.
    """

    device: str = "cpu"
    height: int = 512
    width: int = 512
    batch_size: int = 1
    steps: int = 50
    guidance_scale: float = 7.5


Apply = Callable[[Pipe, ApplyContext], None]


@dataclass(frozen=True)
class Conflict:
    """``other`` cannot be combined with the technique that declares this; ``reason`` says why.

    Declared on one side only; :func:`parse_technique` checks both directions.
    """

    other: str
    reason: str


@dataclass(frozen=True)
class Parameter:
    """The optional argument of a technique, written ``name(arg)``.

    ``parse`` turns the text into a canonical value or raises ValueError; ``make`` gives the apply
    function for a value. The bare name means ``default``.
    """

    accepted: str
    parse: Callable[[str], Any]
    make: Callable[[Any], Apply]
    default: Any


@dataclass(frozen=True)
class Technique:
    """One technique: how to switch it on, what it needs and what it claims.

    ``order`` is its place in the canonical order (unique, increasing with ``stage``);
    ``dtype`` is the load dtype it implies (None: no opinion); ``sets_attention`` marks the
    techniques that choose the attention processor, so the classic one is not installed;
    ``probe(device)`` returns a reason when a requirement that is not a package, a CUDA device
    or a torch version is missing (a C++ compiler for ``compile``).
    """

    name: str
    summary: str
    claim: str
    order: int
    stage: Stage
    apply: Apply
    requires_cuda: bool = False
    requires_packages: tuple[str, ...] = ()
    min_torch: str | None = None
    conflicts: tuple[Conflict, ...] = ()
    dtype: torch.dtype | None = None
    output_tolerance: OutputTolerance = SAME_MATH
    notes: str = ""
    sets_attention: bool = False
    probe: Callable[[str], str | None] | None = None
    parameter: Parameter | None = None

    @property
    def key(self) -> str:
        """The registry name: ``attention_slicing`` for ``attention_slicing(1)``."""
        return self.name.partition("(")[0]

    def bind(self, text: str) -> Technique:
        """This technique with the argument ``text`` (the ``1`` of ``attention_slicing(1)``).

        The canonical value names the result, so ``attention_slicing(max)`` and
        ``attention_slicing(1)`` are one technique, and the default is the bare name.
        """
        if self.parameter is None:
            raise TechniqueError(f"{self.name} takes no argument, got {self.name}({text})")
        try:
            value = self.parameter.parse(text.strip())
        except ValueError:
            raise TechniqueError(
                f"invalid argument {text.strip()!r} of {self.name}: expected "
                f"{self.parameter.accepted}"
            ) from None
        if value == self.parameter.default:
            return self
        return replace(self, name=f"{self.name}({value})", apply=self.parameter.make(value))


# --- apply functions -------------------------------------------------------------------------


def _is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"


def _modules(pipe: Pipe) -> list[torch.nn.Module]:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


class _NoModuleKeptInFloat32(logging.Filter):
    """Drops diffusers' notice, logged by ``ModelMixin.to(dtype)`` for every model, that the
    model's modules to keep in float32 are ``[]``: Stable Diffusion's models have none, so the
    notice says nothing and would print on every fp16 test. A non-empty list still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "that should be kept in float32: []." not in record.getMessage()


def cast_pipeline(pipe: Pipe, dtype: torch.dtype) -> None:
    """Cast every model of ``pipe`` to ``dtype``; a no-op when already there (the runner loads
    in the set's dtype, so this only does work on a pipeline built in another dtype)."""
    if any(m.dtype != dtype for m in _modules(pipe)):
        notice = _NoModuleKeptInFloat32()
        logger = logging.getLogger("diffusers.models.modeling_utils")
        logger.addFilter(notice)
        try:
            pipe.to(dtype=dtype, silence_dtype_warnings=True)
        finally:
            logger.removeFilter(notice)


@dataclass(frozen=True)
class _Cast:
    dtype: torch.dtype

    def __call__(self, pipe: Pipe, ctx: ApplyContext) -> None:
        cast_pipeline(pipe, self.dtype)


def _classic_attention(pipe: Pipe, ctx: ApplyContext) -> None:
    # AttnProcessor computes softmax(QK^T)V with the full attention matrix, as diffusers did
    # before PyTorch 2: the guide's "original" row, and the processor diffusers' own memory tests
    # measure attention slicing against (set_default_attn_processor). The transformers of SD 3
    # and Flux keep their own processors (joint attention, rotary embeddings), which have no
    # classic or plain-SDPA form: the choice applies to a UNet and the VAE.
    for model in _attention_models(pipe):
        model.set_default_attn_processor()


def _attention_models(pipe: Pipe) -> list[torch.nn.Module]:
    """The models whose attention processor the attention techniques choose: the UNet, if
    the pipeline has one, and the VAE."""
    unet = getattr(pipe, "unet", None)
    return [pipe.vae] if unet is None else [unet, pipe.vae]


def _sdpa(pipe: Pipe, ctx: ApplyContext) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in _attention_models(pipe):
        model.set_attn_processor(AttnProcessor2_0())


def _xformers(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_xformers_memory_efficient_attention()


def _parse_slice_size(text: str) -> str | int:
    if text in ("auto", "max"):
        # diffusers' "max" is a slice of one head in every layer: the same as 1.
        return 1 if text == "max" else text
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise ValueError(text)
    return int(text)


_SLICE_ACCEPTED = ("'auto' (the default: half the heads), 'max' (= 1) or a positive whole "
                   "number of heads per slice, e.g. attention_slicing(1)")


@dataclass(frozen=True)
class _AttentionSlicing:
    slice_size: str | int

    def __call__(self, pipe: Pipe, ctx: ApplyContext) -> None:
        """Slice the attention; a slice larger than a layer's heads is refused here, against
        the model, where the parser cannot know its head counts (diffusers would raise a bare
        ValueError from deep inside ``set_attention_slice``)."""
        heads = [m.sliceable_head_dim for m in pipe.unet.modules()
                 if isinstance(getattr(m, "sliceable_head_dim", None), int)]
        if isinstance(self.slice_size, int) and heads and self.slice_size > min(heads):
            fewest, most = min(heads), max(heads)
            counts = f"{fewest}" if fewest == most else f"{fewest} to {most}"
            raise TechniqueError(
                f"invalid argument {self.slice_size} of attention_slicing for this model: its "
                f"attention layers have {counts} heads, so a slice holds 1 to {fewest} of "
                f"them; expected {_SLICE_ACCEPTED}"
            )
        pipe.enable_attention_slicing(self.slice_size)


def _channels_last(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.unet.to(memory_format=torch.channels_last)


def _vae_slicing(pipe: Pipe, ctx: ApplyContext) -> None:
    # pipe.enable_vae_slicing() was removed in diffusers 0.40: the switch lives on the VAE.
    pipe.vae.enable_slicing()


def _vae_tiling(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.vae.enable_tiling()


def _layerwise_casting(pipe: Pipe, ctx: ApplyContext) -> None:
    # Only diffusers models have enable_layerwise_casting (with their own skip patterns for
    # precision-critical norms); the transformers text encoder keeps its dtype.
    for model in (pipe.unet, pipe.vae):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                       compute_dtype=model.dtype)


def _sequential_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_sequential_cpu_offload(device=ctx.device)


def _model_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    pipe.enable_model_cpu_offload(device=ctx.device)


def _group_offload(pipe: Pipe, ctx: ApplyContext) -> None:
    onload = torch.device(ctx.device)
    pipe.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"),
                              offload_type="leaf_level", use_stream=onload.type == "cuda")


def example_unet_inputs(pipe: Pipe, ctx: ApplyContext) -> tuple[torch.Tensor, ...]:
    """UNet inputs as the pipeline will pass them for ``ctx``: latents, the first timestep of
    the schedule (its dtype too: compiled code is specialised on dtypes) and text embeddings."""
    unet = pipe.unet
    cfg = 2 if ctx.guidance_scale > 1 and unet.config.time_cond_proj_dim is None else 1
    batch = ctx.batch_size * cfg
    scale = pipe.vae_scale_factor
    device, dtype = torch.device(ctx.device), unet.dtype
    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(
        (batch, unet.config.in_channels, ctx.height // scale, ctx.width // scale),
        generator=generator, device=device, dtype=dtype,
    )
    text = torch.randn(
        (batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim),
        generator=generator, device=device, dtype=dtype,
    )
    pipe.scheduler.set_timesteps(ctx.steps, device=device)
    return latents, pipe.scheduler.timesteps[0], text


class _UNetCall(torch.nn.Module):
    """The UNet's positional, tuple-returning call: what ``torch.jit.trace`` can record.

    Holding the UNet as a submodule makes its weights parameters of the trace (shared, not
    copied) instead of constants baked into the graph.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         return_dict=False)[0]


class TracedUNet(torch.nn.Module):
    """Stands in for ``pipe.unet`` after ``jit_trace``: the pipeline still reads ``.config``,
    ``.dtype`` and ``.device`` and calls it with diffusers' keyword arguments.

    A trace records one set of shapes; Python branches on shapes are frozen into it, so another
    shape is refused with a clear error instead of risking a wrong image. Timesteps are fed as
    float32 (the UNet turns them into float embeddings anyway), so integer and float schedules
    give the traced graph the dtype it was traced with.
    """

    def __init__(self, traced: torch.nn.Module, config: Any, sample_shape: torch.Size,
                 text_shape: torch.Size) -> None:
        super().__init__()
        self.traced = traced
        self.config = config
        self.sample_shape = sample_shape
        self.text_shape = text_shape

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, *, timestep_cond: Any = None,
                cross_attention_kwargs: Any = None, added_cond_kwargs: Any = None,
                return_dict: bool = True) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        extras = {"timestep_cond": timestep_cond, "cross_attention_kwargs": cross_attention_kwargs,
                  "added_cond_kwargs": added_cond_kwargs}
        given = sorted(k for k, v in extras.items() if v)
        if given:
            raise ValueError(f"jit_trace: the traced UNet takes no {', '.join(given)}")
        if sample.shape != self.sample_shape or encoder_hidden_states.shape != self.text_shape:
            raise ValueError(
                f"jit_trace traced the UNet for latents {tuple(self.sample_shape)} and text "
                f"embeddings {tuple(self.text_shape)}, got {tuple(sample.shape)} and "
                f"{tuple(encoder_hidden_states.shape)}: a trace is fixed to its shapes; apply "
                "jit_trace with an ApplyContext of this height, width, batch size and guidance"
            )
        t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device)
        out = self.traced(sample, t, encoder_hidden_states)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


#: What torch.jit.trace of the UNet warns about, and why each is harmless here: the deprecation
#: (the entry exists to reproduce the guide's row; ``compile`` is the replacement) and
#: TracerWarnings about shape-dependent Python branches, which :class:`TracedUNet` covers by
#: refusing other shapes.
_TRACE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*torch\.jit\.trace.* is deprecated", DeprecationWarning),
    ("", torch.jit.TracerWarning),
)


def _jit_trace(pipe: Pipe, ctx: ApplyContext) -> None:
    unet = pipe.unet.eval()
    sample, timestep, text = example_unet_inputs(pipe, ctx)
    with warnings.catch_warnings(), torch.no_grad():
        for message, category in _TRACE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        traced = torch.jit.trace(_UNetCall(unet), (sample, timestep.float(), text))
    pipe.unet = TracedUNet(traced, unet.config, sample.shape, text.shape)


def _compile(pipe: Pipe, ctx: ApplyContext) -> None:
    # In place (nn.Module.compile) rather than torch.compile(unet): the UNet stays a
    # UNet2DConditionModel, so offload and casting hooks and the pipeline's attribute reads are
    # untouched. One warm-up call at the generation's shapes compiles now, not inside the first
    # measured call.
    pipe.unet.compile()
    sample, timestep, text = example_unet_inputs(pipe, ctx)
    with torch.no_grad():
        # The keyword arguments StableDiffusionPipeline passes: compiled code is guarded on
        # their number, so any other call would compile again at the first generation.
        pipe.unet(sample, timestep, encoder_hidden_states=text, timestep_cond=None,
                  cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=False)
    pipe.maybe_free_model_hooks()  # with model offload, send the UNet back as a call would


def triton_build_problem(environ: Mapping[str, str] | None = None,
                         include_dir: str | None = None) -> str | None:
    """Why triton could not build its launcher here, or None when it could.

    On CUDA, inductor's kernels are triton's, and triton compiles a small C launcher with the
    host's C compiler against the Python headers the first time a kernel runs: a machine
    without them fails inside the first compiled call, not at import. The compiler is found
    the way ``triton.runtime.build._build`` finds it: ``$CC`` if set (used as given), else
    ``gcc``, else ``clang`` on ``PATH``; the headers are ``Python.h`` in
    ``sysconfig.get_paths()["include"]`` of the default scheme (Debian's ``posix_local`` read
    as ``posix_prefix``, as triton does). ``environ`` and ``include_dir`` default to this
    process's; they are parameters so that a machine without a compiler can be described.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("PATH", "")
    cc = environ.get("CC")
    if cc is not None:
        if shutil.which(cc, path=path) is None:
            return (f"compile on CUDA needs a C compiler for triton's launcher: CC={cc!r} is "
                    "not an executable (triton uses $CC as given)")
    elif shutil.which("gcc", path=path) is None and shutil.which("clang", path=path) is None:
        return ("compile on CUDA needs a C compiler for triton's launcher: neither gcc nor "
                "clang is on PATH and CC is not set (install gcc, or set CC)")
    if include_dir is None:
        scheme = sysconfig.get_default_scheme()
        include_dir = sysconfig.get_paths(
            scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    if not os.path.isfile(os.path.join(include_dir, "Python.h")):
        return (f"compile on CUDA needs the Python headers for triton's launcher: no Python.h "
                f"in {include_dir} (install python3-dev / python{sys.version_info.major}."
                f"{sys.version_info.minor}-dev)")
    return None


def _compiler_probe(device: str) -> str | None:
    """torch.compile's inductor needs a C++ compiler on the CPU, and on CUDA triton with a C
    compiler and the Python headers (see ``triton_build_problem``)."""
    if _is_cuda(device):
        if importlib.util.find_spec("triton") is None:
            return "compile on CUDA needs triton (pip install triton)"
        return triton_build_problem()
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # moved in another torch: let compile itself report what is missing
        return None
    try:
        get_cpp_compiler()
    except RuntimeError:
        return ("compile on the CPU needs a C++ compiler for torch inductor: install g++ "
                "or point CXX at one")
    return None


# --- the registry ----------------------------------------------------------------------------

_OFFLOAD_REPLACES = (
    "each enable_*_cpu_offload call first removes the hooks of the other (remove_all_hooks), so "
    "one offload mode silently replaces the other"
)
_GROUP_VS_ACCELERATE = (
    "diffusers refuses group offloading on a pipeline with accelerate offload hooks and "
    "accelerate offloading on a group-offloaded one"
)
_HOOKS_NOT_TRACED = (
    "a traced graph does not run module hooks, and {0} works through hooks around each module's "
    "forward"
)


def _traced_hooks(name: str) -> Conflict:
    return Conflict(name, _HOOKS_NOT_TRACED.format(name))


_ENTRIES: tuple[Technique, ...] = (
    Technique(
        name="none",
        summary="fp32 weights and the classic attention processor (full attention matrix)",
        claim="the guide's 'original' row: 9.50 s for SD 1.5, 512x512, 50 DDIM steps on a "
              "Titan RTX; the baseline of every speed-up",
        order=0, stage=Stage.CONFIGURE, apply=_classic_attention, dtype=torch.float32,
        notes="Not combinable: every other set starts from it (fp32 unless fp16/bf16, classic "
              "attention unless sdpa/xformers).",
    ),
    Technique(
        name="fp16",
        summary="weights and activations in float16 (loaded with torch_dtype=torch.float16)",
        claim="2.63x faster than fp32 (3.61 s), and half the weights' memory",
        order=10, stage=Stage.CONFIGURE, apply=_Cast(torch.float16), dtype=torch.float16,
        output_tolerance=HALF,
        conflicts=(Conflict("bf16", "a pipeline is loaded in one dtype: fp16 or bf16"),),
    ),
    Technique(
        name="bf16",
        summary="weights and activations in bfloat16 (loaded with torch_dtype=torch.bfloat16)",
        claim="half the weights' memory, like fp16, with fp32's range",
        order=11, stage=Stage.CONFIGURE, apply=_Cast(torch.bfloat16), dtype=torch.bfloat16,
        output_tolerance=BFLOAT,
    ),
    Technique(
        name="sdpa",
        summary="PyTorch scaled_dot_product_attention (AttnProcessor2_0) in the UNet and VAE",
        claim="memory-efficient attention without xFormers: on PyTorch >= 2 as fast as xFormers; "
              "the last row of the guide's table (x3.61 cumulative)",
        order=20, stage=Stage.CONFIGURE, apply=_sdpa, min_torch="2.0", sets_attention=True,
        output_tolerance=REORDERED,
        conflicts=(Conflict("xformers", "both set the attention processor: the one applied "
                                        "last silently replaces the other"),),
    ),
    Technique(
        name="xformers",
        summary="xFormers memory-efficient attention "
                "(pipe.enable_xformers_memory_efficient_attention())",
        claim="x3.61 over fp32 cumulative in the guide (2.63 s); on PyTorch >= 2 no faster "
              "than sdpa",
        order=21, stage=Stage.CONFIGURE, apply=_xformers, requires_cuda=True,
        requires_packages=("xformers",), sets_attention=True, output_tolerance=REORDERED,
    ),
    Technique(
        name="attention_slicing",
        summary="attention computed a slice of heads at a time (pipe.enable_attention_slicing); "
                "attention_slicing(N) slices N heads, attention_slicing(max) one",
        claim="peak memory of SD 1.5 fp16 at 512x512 below 3.75e9 bytes (diffusers' own test); "
              "with sequential offload and slices of 1, below 2.8e9",
        order=22, stage=Stage.CONFIGURE, apply=_AttentionSlicing("auto"),
        output_tolerance=REORDERED,
        parameter=Parameter(
            accepted=_SLICE_ACCEPTED,
            parse=_parse_slice_size, make=_AttentionSlicing, default="auto",
        ),
        conflicts=(
            Conflict("xformers", "slicing installs its own attention processor and silently "
                                 "replaces xFormers (diffusers issue 2053)"),
            Conflict("sdpa", "slicing installs its own attention processor and silently replaces "
                             "SDPA; diffusers warns that slicing SDPA only slows it down"),
        ),
    ),
    Technique(
        name="channels_last",
        summary="UNet weights in channels-last memory format "
                "(pipe.unet.to(memory_format=torch.channels_last))",
        claim="x2.88 over fp32 with fp16 (3.30 s); SD's unet.conv_out weight stride goes from "
              "(2880, 9, 3, 1) to (2880, 1, 960, 320)",
        order=30, stage=Stage.CONFIGURE, apply=_channels_last, output_tolerance=REORDERED,
    ),
    Technique(
        name="vae_slicing",
        summary="the VAE decodes a batch one image at a time (pipe.vae.enable_slicing())",
        claim="a batch of 32 images decodes within memory; batches get slightly faster and a "
              "single image no slower",
        order=40, stage=Stage.CONFIGURE, apply=_vae_slicing,
    ),
    Technique(
        name="vae_tiling",
        summary="the VAE works in overlapping tiles (pipe.vae.enable_tiling())",
        claim="a 3840x2224 image (20 UniPC steps) fits in 8 GB of VRAM; tiles may differ in "
              "tone but show no seams; SD's VAE does not tile images up to 512x512",
        order=41, stage=Stage.CONFIGURE, apply=_vae_tiling, output_tolerance=TILED,
    ),
    Technique(
        name="layerwise_casting",
        summary="UNet and VAE weights stored in float8 e4m3, each layer upcast to the "
                "pipeline's dtype for its forward (enable_layerwise_casting)",
        claim="weight memory below fp16's (diffusers: fp8 storage < fp16 weights)",
        order=45, stage=Stage.CONFIGURE, apply=_layerwise_casting, min_torch="2.1",
        output_tolerance=FP8_STORAGE,
        notes="The text encoder (a transformers model) has no enable_layerwise_casting and keeps "
              "its dtype; diffusers skips norm layers by default.",
    ),
    Technique(
        name="sequential_offload",
        summary="sub-modules onloaded to the GPU one at a time "
                "(pipe.enable_sequential_cpu_offload()), never .to('cuda') first",
        claim="under 3 GB of VRAM (2.8e9 bytes with attention_slicing(1)), much slower",
        order=50, stage=Stage.PLACE, apply=_sequential_offload, requires_cuda=True,
        conflicts=(Conflict("model_offload", _OFFLOAD_REPLACES),
                   Conflict("group_offload", _GROUP_VS_ACCELERATE)),
        notes="On the CPU, accelerate 1.15 cannot even run it: onloading to 'cpu:0' turns the "
              "parameters into plain tensors and the next offload fails.",
    ),
    Technique(
        name="model_offload",
        summary="whole models onloaded to the GPU on demand (pipe.enable_model_cpu_offload())",
        claim="below 3.5e9 bytes (3e9 with attention slicing) at almost the latency of the "
              "pipeline on the GPU",
        order=51, stage=Stage.PLACE, apply=_model_offload, requires_cuda=True,
        conflicts=(Conflict("group_offload", _GROUP_VS_ACCELERATE),),
    ),
    Technique(
        name="group_offload",
        summary="leaf-level group offloading with CUDA streams (pipe.enable_group_offload)",
        claim="less memory than block-level offload and no offload; the images stay right "
              "(diffusers issues 11981 and 12673)",
        order=52, stage=Stage.PLACE, apply=_group_offload, requires_cuda=True,
        conflicts=(Conflict("vae_tiling", "diffusers warns that group offloading an autoencoder "
                                          "with CUDA streams may not work when its first forward "
                                          "pass runs tiled"),),
    ),
    Technique(
        name="jit_trace",
        summary="the UNet traced with torch.jit.trace for the generation's shapes",
        claim="x2.96 over fp32 with fp16 and channels_last (3.21 s)",
        order=60, stage=Stage.WRAP, apply=_jit_trace, output_tolerance=REORDERED,
        conflicts=(
            _traced_hooks("layerwise_casting"),
            _traced_hooks("sequential_offload"),
            _traced_hooks("model_offload"),
            _traced_hooks("group_offload"),
            Conflict("compile", "both replace the UNet's forward: trace or compile, not both"),
        ),
        notes="torch.jit.trace is deprecated in current PyTorch (its replacement is "
              "torch.compile / torch.export): the DeprecationWarning and the TracerWarnings of "
              "the trace are caught. A trace is fixed to the shapes of the ApplyContext; other "
              "shapes are refused.",
    ),
    Technique(
        name="compile",
        summary="torch.compile of the UNet (in place, default mode), warmed up at apply",
        claim="today's replacement for the traced UNet: at least its speed-up",
        order=61, stage=Stage.WRAP, apply=_compile, min_torch="2.0", probe=_compiler_probe,
        output_tolerance=REORDERED,
        notes="Compiling costs about a minute for the tiny UNet on a 2-core CPU with an empty "
              "inductor cache (seconds with a warm one); each new shape compiles again. With "
              "hook-based techniques (layerwise_casting, group_offload) dynamo breaks the graph "
              "at every hooked layer and stops recompiling the shared hook function at its "
              "recompile limit: the result is right but compiled only in part.",
    ),
)

REGISTRY: dict[str, Technique] = {t.name: t for t in _ENTRIES}


@dataclass(frozen=True)
class Preset:
    """A cumulative row of the guide's table (SD 1.5, 512x512, 50 DDIM steps, Titan RTX)."""

    name: str
    techniques: tuple[str, ...]
    guide_latency_s: float
    guide_speedup: float
    notes: str = ""


_PRESET_LIST: tuple[Preset, ...] = (
    Preset("seed:fp16", ("fp16",), 3.61, 2.63),
    Preset("seed:channels_last", ("fp16", "channels_last"), 3.30, 2.88),
    Preset("seed:traced_unet", ("fp16", "channels_last", "jit_trace"), 3.21, 2.96),
    Preset(
        "seed:memory_efficient_attention", ("fp16", "sdpa", "channels_last", "jit_trace"),
        2.63, 3.61,
        notes="sdpa rather than xformers: on PyTorch >= 2 the guide expects both to be equally "
              "fast, and sdpa needs no extra package, so the row is measured on every machine; "
              "xformers is best compared with sdpa directly ('xformers' against 'sdpa').",
    ),
)
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESET_LIST}


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TechniqueSet:
    """A parsed combination of techniques, in canonical order.

    Equal sets compare equal whatever was written; ``preset`` only names the set when it was
    written as exactly one preset, so that ``expr`` (and test ids and result rows) read
    ``seed:traced_unet`` rather than its expansion.
    """

    techniques: tuple[Technique, ...] = ()
    preset: str | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.techniques)

    @property
    def expr(self) -> str:
        """The canonical expression; :func:`parse_technique` of it gives this set back."""
        return self.preset or "+".join(self.names) or "none"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype to load the pipeline in: fp16/bf16 when chosen, else fp32 (the guide's
        original)."""
        return next((t.dtype for t in self.techniques if t.dtype is not None), torch.float32)

    @property
    def output_tolerance(self) -> OutputTolerance:
        """The loosest tolerance among the techniques (``none``'s for the empty set)."""
        tolerance = REGISTRY["none"].output_tolerance
        for technique in self.techniques:
            tolerance = tolerance.loosest(technique.output_tolerance)
        return tolerance

    def __contains__(self, name: object) -> bool:
        return any(t.key == name for t in self.techniques)

    def __str__(self) -> str:
        return self.expr


_TOKEN_RE = re.compile(r"^([a-z0-9_]+)\s*(?:\((.*)\))?$")


def _known() -> str:
    names = ", ".join(
        f"{t.name}(ARG)" if t.parameter is not None else t.name for t in _ENTRIES
    )
    return (f"known techniques: {names}; presets: {', '.join(PRESETS)}; combine with '+', "
            "e.g. 'fp16+vae_slicing'")


def _unknown(token: str, expr: str) -> TechniqueError:
    close = difflib.get_close_matches(token, [*REGISTRY, *PRESETS], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TechniqueError(f"unknown technique {token!r} in {expr!r}{hint}: {_known()}")


def _resolve(token: str, expr: str) -> list[tuple[Technique, str | None]]:
    """The techniques one token stands for, each with the preset it came from."""
    if token in PRESETS:
        return [(REGISTRY[name], token) for name in PRESETS[token].techniques]
    match = _TOKEN_RE.match(token)
    if match is None or match.group(1) not in REGISTRY:
        raise _unknown(token, expr)
    technique = REGISTRY[match.group(1)]
    argument = match.group(2)
    return [(technique if argument is None else technique.bind(argument), None)]


def _conflicts(techniques: tuple[Technique, ...]) -> list[str]:
    found = []
    for i, a in enumerate(techniques):
        for b in techniques[i + 1:]:
            for declared, other in ((a, b), (b, a)):
                for conflict in declared.conflicts:
                    if conflict.other == other.key:
                        found.append(f"{a.name} with {b.name}: {conflict.reason}")
    return found


def parse_technique(expr: str) -> TechniqueSet:
    """Parse ``"fp16+vae_slicing"`` (names and presets joined by '+') into a TechniqueSet.

    Strict, because a misspelt technique must not silently measure another pipeline: names are
    exact (whitespace around them is ignored), ``none`` stands alone, a technique listed twice
    (also through a preset) is an error rather than merged, and a combination that cannot work
    is refused with the reason. The written order does not matter.
    """
    if not isinstance(expr, str):
        raise TechniqueError(f"a technique expression is a string, got {expr!r}: {_known()}")
    tokens = [token.strip() for token in expr.split("+")]
    if tokens == [""]:
        raise TechniqueError(f"empty technique expression: write 'none' for no technique; "
                             f"{_known()}")
    if "" in tokens:
        raise TechniqueError(f"empty technique name in {expr!r}: {_known()}")
    if "none" in tokens:
        if len(tokens) > 1:
            rest = "+".join(t for t in tokens if t != "none") or "none"
            raise TechniqueError(f"'none' means no technique and cannot be combined, in "
                                 f"{expr!r}: write {rest!r}")
        return TechniqueSet()
    chosen: dict[str, tuple[Technique, str | None]] = {}
    for token in tokens:
        for technique, source in _resolve(token, expr):
            if technique.key in chosen:
                first = chosen[technique.key][1]
                via = [f"preset {p}" for p in (first, source) if p is not None]
                raise TechniqueError(
                    f"{technique.key} is listed twice in {expr!r}"
                    f"{' (through ' + ' and '.join(via) + ')' if via else ''}: write it once"
                )
            chosen[technique.key] = (technique, source)
    techniques = tuple(sorted((t for t, _ in chosen.values()), key=lambda t: t.order))
    problems = _conflicts(techniques)
    if problems:
        raise TechniqueError(f"cannot combine {expr!r}: " + "; ".join(problems))
    preset = tokens[0] if len(tokens) == 1 and tokens[0] in PRESETS else None
    return TechniqueSet(techniques, preset)


# --- requirements and application ------------------------------------------------------------


def unmet_requirements(ts: TechniqueSet, device: str) -> list[str]:
    """Why ``ts`` cannot run on ``device`` here, one skip reason per missing thing; empty when
    it can. Each reason names what is missing and how to get it."""
    reasons: list[str] = []
    installed = Version(torch.__version__.split("+")[0])
    for t in ts.techniques:
        if t.requires_cuda and not _is_cuda(device):
            reasons.append(f"{t.key} needs a CUDA device: run with --gpu")
        for package in t.requires_packages:
            if importlib.util.find_spec(package) is None:
                reasons.append(f"{package} is not installed (pip install pytest-sdmem[{package}])")
        if t.min_torch is not None and installed < Version(t.min_torch):
            reasons.append(f"{t.key} needs torch >= {t.min_torch}, installed: {torch.__version__}")
        if t.probe is not None and (reason := t.probe(device)) is not None:
            reasons.append(reason)
    return list(dict.fromkeys(reasons))


def apply_techniques(pipe: Pipe, ts: TechniqueSet, ctx: ApplyContext) -> Pipe:
    """Switch ``ts`` on in ``pipe`` in canonical order and put the pipeline on ``ctx.device``.

    First the guide's baseline (fp32 unless the set has a dtype, classic attention unless it
    chooses one), then the ``CONFIGURE`` techniques, then placement: ``pipe.to(ctx.device)``
    unless an offload technique places the models itself, then the ``WRAP`` techniques, which
    must see the final weights and device.
    """
    if ts.dtype == torch.float32:
        cast_pipeline(pipe, torch.float32)
    if not any(t.sets_attention for t in ts.techniques):
        REGISTRY["none"].apply(pipe, ctx)
    for stage in Stage:
        if stage is Stage.WRAP and not any(t.stage is Stage.PLACE for t in ts.techniques):
            pipe.to(ctx.device, silence_dtype_warnings=True)
        for technique in ts.techniques:
            if technique.stage is stage:
                technique.apply(pipe, ctx)
    return pipe

