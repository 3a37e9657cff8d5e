"""Techniques that replace the denoiser's forward: ``jit_trace`` (the guide's traced UNet,
:class:`TracedUNet`) and ``compile`` (torch.compile of the UNet or transformer, today's
replacement), with the inputs they are traced or warmed up on and the probe for the compiler
``compile`` needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from pytest_sdmem.building.techniques.context import ApplyContext, Pipe, denoiser, is_cuda


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


def apply_jit_trace(pipe: Pipe, ctx: ApplyContext) -> None:
    unet = pipe.unet.eval()
    sample, timestep, text = example_unet_inputs(pipe, ctx)
    with warnings.catch_warnings(), torch.no_grad():
        for message, category in _TRACE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        traced = torch.jit.trace(_UNetCall(unet), (sample, timestep.float(), text))
    pipe.unet = TracedUNet(traced, unet.config, sample.shape, text.shape)


#: Denoising steps of ``compile``'s warm-up generation: every call the pipeline makes to its
#: denoiser has the shapes and arguments of the first, and two steps stay clear of any
#: scheduler's one-step corner case.
COMPILE_WARM_UP_STEPS = 2


def apply_compile(pipe: Pipe, ctx: ApplyContext) -> None:
    # In place (nn.Module.compile) rather than torch.compile(model): the UNet or transformer
    # keeps its class, so offload and casting hooks and the pipeline's attribute reads are
    # untouched. The warm-up is a short generation at ``ctx``'s shapes, to latents (no VAE),
    # called by the pipeline itself: compiled code is guarded on the number, shapes and dtypes
    # of the arguments, and each family's pipeline passes its own (SDXL's added conditioning,
    # Flux's guidance and position ids), so the measured generation compiles nothing more.
    # With model offload, the call sends the models back as any call does.
    denoiser(pipe).compile()
    kwargs: dict[str, Any] = {
        "prompt": "", "num_inference_steps": min(ctx.steps, COMPILE_WARM_UP_STEPS),
        "height": ctx.height, "width": ctx.width, "num_images_per_prompt": ctx.batch_size,
        "guidance_scale": ctx.guidance_scale, "output_type": "latent",
        "generator": torch.Generator(device=ctx.device).manual_seed(0),
    }
    if ctx.max_sequence_length is not None:
        kwargs["max_sequence_length"] = ctx.max_sequence_length
    with torch.no_grad():
        pipe(**kwargs)


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


def compiler_probe(device: str) -> str | None:
    """torch.compile's inductor needs a C++ compiler on the CPU, and on CUDA triton with a C
    compiler and the Python headers (see ``triton_build_problem``)."""
    if is_cuda(device):
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

