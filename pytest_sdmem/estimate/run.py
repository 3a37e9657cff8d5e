"""Estimate a generation's CUDA memory by running the real pipeline on meta tensors.

The synthetic pipeline is built on the meta device (shapes and dtypes, no data: a second, not
minutes, and no weights in host memory), the technique's configuration is applied with the
same functions the GPU run uses, and the family's pipeline ``__call__`` runs unchanged
(``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``,
``FluxPipeline``): the text encoders (SDXL's two CLIPs, SD 3's two CLIPs and T5, Flux's CLIP
and T5), the denoising loop (a UNet with classifier-free guidance and, for SDXL, its added
time ids; SD 3's joint-attention transformer; Flux's transformer with rotary embeddings, its
guidance embedding and packed latents), the VAE decode (SDXL's ``force_upcast`` to float32
included), SD 1.x's safety checker and the image postprocessing. A ``SimulatedDevice`` turns
the meta storages the code creates and frees into blocks of the CUDA caching allocator model;
a placement policy decides where the weights are (see ``placement``); ``CudaAttention`` and
``CudaConvolution`` make SDPA and 2-d convolutions allocate what the CUDA kernels of the
target card (``gpus``) would, cuDNN's convolution workspace included, and the first model
entered allocates the cuBLAS and cuBLASLt workspaces (``blas``), which stay. A ``Locator``
names the module and function running at the peak.

What had to be bypassed, all at the boundary between device and host, none of it inside the
models:

* Values read back to the host (``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()``,
  ``.to("cpu")`` of a meta tensor) are zeros of the right shape and dtype: the image
  postprocessing and the safety checker hand images to numpy and PIL, and the safety checker
  reads its thresholds with ``.item()``. They allocate nothing on a GPU either.
* The scheduler keeps its timesteps on the host: schedulers index their tables and compare
  with the timestep (``alphas_cumprod[t]``, ``prev_t >= 0``), which needs values. On a GPU
  the timesteps tensor is one 512-byte block; here each denoiser call copies its timestep to
  the device instead, also one 512-byte block.
* No generator (meta tensors have no random numbers); the latents' shape and dtype are the
  same.
* The offload techniques are not run (they move weights between the CPU and a CUDA device);
  their placement is modelled instead. Techniques that replace the Python code by something
  the meta run cannot follow are refused (``unsupported_reason``, from the registry entry's
  ``estimation``).
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from pytest_sdmem.building.generation import GenerationArgs, use_scheduler
from pytest_sdmem.building.pipelines import build_pipeline, get_spec
from pytest_sdmem.building.techniques import (
    NOT_ESTIMATED,
    REGISTRY,
    Stage,
    TechniqueError,
    TechniqueSet,
    apply_techniques,
    denoiser,
    family_refusals,
    parse_technique,
)
from pytest_sdmem.building.techniques.offload import OffloadGroups
from pytest_sdmem.estimate.attention import CudaAttention
from pytest_sdmem.estimate.blas import BlasWorkspaces, blas_workspaces
from pytest_sdmem.estimate.convolution import CudaConvolution
from pytest_sdmem.estimate.device import SimulatedDevice
from pytest_sdmem.estimate.gpus import Gpu, gpu_for
from pytest_sdmem.estimate.peak import Locator
from pytest_sdmem.estimate.placement import (
    GroupOffload,
    ModelEntries,
    ModelOffload,
    Models,
    Placement,
    Resident,
    SequentialOffload,
)
from pytest_sdmem.estimate.report import EstimateReport

#: Steps run at most. Every step runs the same code; what differs between steps is the
#: scheduler's history and, with group offloading, the prefetching that starts at the second
#: denoiser call. PNDM (SD 1.5's scheduler) runs one UNet call more than it has steps and keeps
#: up to four previous model outputs, which it holds from the fifth step on; the multistep
#: schedulers (DPM-Solver, UniPC, DEIS) keep at most three. From then on each step repeats the
#: previous one, so more steps cannot change the estimate, only its cost.
DEFAULT_MAX_STEPS = 5
#: Schedulers that keep no model output from one step to the next: each step reads its sigma
#: or alpha from tables on the host and returns the new latents from the current ones and the
#: model output alone. FlowMatchEulerDiscreteScheduler (SD 3, Flux) is Euler's method on the
#: flow: ``prev = sample + (sigma_next - sigma) * model_output``, keeping only its step index
#: (``stochastic_sampling`` off, as both models ship it); EulerDiscreteScheduler (SDXL) keeps
#: nothing either, and DDIM/DDPM/Euler ancestral add at most fresh noise of the latents' shape.
HISTORY_FREE_SCHEDULERS = frozenset({
    "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "FlowMatchEulerDiscreteScheduler",
})
#: Steps run for them: the first step differs from the later ones (model offload enters the
#: denoiser from the text encoders, group offloading records the layers' order during the first
#: denoiser call and prefetches from the second on, and the first scheduler step replaces the
#: latents ``prepare_latents`` made); the second is what every later step repeats.
HISTORY_FREE_STEPS = 2


def stationary_steps(scheduler: Any) -> int:
    """The fewest steps of ``scheduler`` after which each step repeats the previous one:
    ``HISTORY_FREE_STEPS`` for the schedulers without history, ``DEFAULT_MAX_STEPS`` for the
    others."""
    if type(scheduler).__name__ in HISTORY_FREE_SCHEDULERS:
        return HISTORY_FREE_STEPS
    return DEFAULT_MAX_STEPS


class UnsupportedTechniqueError(TechniqueError):
    """The technique set cannot be estimated; the message says why."""


def unsupported_reason(technique_set: TechniqueSet | str, model: str | None = None) -> str | None:
    """Why ``technique_set`` cannot be estimated on meta tensors (for the synthetic ``model``,
    when given), or None when it can.

    Each registry entry says whether the estimator models it (``Technique.estimation``); an
    entry added later is refused until the estimator models it, and so is a technique the
    registry does not hold, rather than estimated as if it were absent. With a model, a
    technique its family refuses (``Technique.families``) is refused too, with that reason.
    """
    ts = parse_technique(technique_set) if isinstance(technique_set, str) else technique_set
    reasons = [] if model is None else family_refusals(ts, get_spec(model).family)
    for technique in ts.techniques:
        entry = REGISTRY.get(technique.key)
        refused = (entry.estimation if entry is not None else NOT_ESTIMATED).refused
        if refused is not None:
            reasons.append(f"{technique.key}: {refused}")
    offloads = [t.key for t in ts.techniques if t.stage is Stage.PLACE]
    if "layerwise_casting" in ts and offloads:
        reasons.append(
            f"layerwise_casting with {offloads[0]}: the casting hooks replace the weights' "
            "storages while the offload model tracks them, so their combination is not modelled"
        )
    if "model_offload" in ts and importlib.util.find_spec("accelerate") is None:
        reasons.append(
            "model_offload: accelerate is not installed, and without it diffusers' "
            "apply_forward_hook (how AutoencoderKL.decode enters the offload chain) is inactive"
        )
    if not reasons:
        return None
    return f"cannot estimate {ts.expr!r}: " + "; ".join(reasons)


def placement_for(ts: TechniqueSet) -> Placement:
    """The placement policy of the set's offload technique (everything resident without);
    group offloading with or without CUDA streams as its entry applies it (on CUDA)."""
    if "model_offload" in ts:
        return ModelOffload()
    if "sequential_offload" in ts:
        return SequentialOffload()
    for technique in ts.techniques:
        if isinstance(technique.apply, OffloadGroups):
            return GroupOffload(use_stream=technique.apply.use_stream)
    return Resident()


def estimate_generation(model: str = "sd15", technique: TechniqueSet | str = "none",
                        args: GenerationArgs | None = None, *, safety_checker: bool = True,
                        max_steps: int | None = None,
                        gpu: Gpu | str | None = None) -> EstimateReport:
    """Estimate ``torch.cuda.max_memory_allocated`` of one generation of the synthetic
    ``model`` (any family of the catalogue: "sd15", "sdxl", "flux-dev", "tiny-sd3", ...)
    under ``technique`` on ``gpu`` (a card or its ``get_device_name()``; default
    ``gpus.DEFAULT_GPU``), without a GPU.

    ``args`` defaults to the guide's generation (one 512x512 image); the steps run are as
    few as make the peak stationary for the pipeline's scheduler (``stationary_steps``), or
    at most ``max_steps`` when it is given. Raises UnsupportedTechniqueError for a set
    ``unsupported_reason`` refuses, TechniqueError for an unknown one, ModelError for a
    model that is not synthetic and BlasConfigError for unreadable cuBLAS variables.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    ts = parse_technique(technique) if isinstance(technique, str) else technique
    reason = unsupported_reason(ts, model)
    if reason is not None:
        raise UnsupportedTechniqueError(reason)
    args = args or GenerationArgs()
    card = gpu if isinstance(gpu, Gpu) else gpu_for(gpu)
    workspaces = blas_workspaces(card)
    started = time.perf_counter()
    pipe = build_pipeline(model, device="meta", safety_checker=safety_checker)
    on_meta = TechniqueSet(tuple(t for t in ts.techniques if t.stage is not Stage.PLACE))
    apply_techniques(pipe, on_meta, args.context("meta"))
    if args.scheduler is not None:
        use_scheduler(pipe, args.scheduler)
    steps = min(args.num_inference_steps,
                max_steps if max_steps is not None else stationary_steps(pipe.scheduler))
    models = Models.of(pipe)
    placement = placement_for(ts)
    locator = Locator(models.models)
    # Cyclic garbage the run makes is freed when the collector runs, whose moments depend on
    # the objects counted since its last pass: collecting first makes them the run's own, not
    # the process's history.
    gc.collect()
    with SimulatedDevice() as device:
        device.where = locator.where
        try:
            placement.attach(models, device)
            start = device.allocated
            device.reset_peak()
            entries = [device.set_phase, placement.enter_model, BlasOnFirstEntry(device,
                                                                                 workspaces)]
            with ModelEntries(models, entries), CudaAttention(card) as attention, \
                    CudaConvolution(card, device), HostBoundary(), timesteps_on_host(pipe), \
                    locator:
                pipe(**replace(args, num_inference_steps=steps).pipeline_kwargs(),
                     output_type="np")
            placement.finish()
        finally:
            placement.detach()
        allocator = device.allocator
        return EstimateReport(
            model=model, technique=ts.expr, args=args, steps_estimated=steps,
            # Only SD 1.x ships a safety checker: the report says whether one ran.
            safety_checker=safety_checker and get_spec(model).has_safety_checker,
            estimated_allocated=allocator.peak_allocated,
            estimated_reserved=allocator.peak_reserved,
            start_allocated=start, end_allocated=allocator.allocated,
            tensor_bytes_at_peak=allocator.requested_at_peak,
            phase_peaks=dict(device.phase_peaks), placement=placement.description,
            attention_kernels=dict(attention.kernels),
            seconds=time.perf_counter() - started,
            gpu=card.describe(), blas_workspaces=workspaces.describe(),
            peak_place=device.peak_place,
        )


class BlasOnFirstEntry:
    """A ``ModelEntries`` listener: the first model entered allocates the cuBLAS and cuBLASLt
    workspaces, as its first matrix product does on CUDA (every model of the pipeline starts
    with one within its first layers), and they are never freed."""

    def __init__(self, device: SimulatedDevice, workspaces: BlasWorkspaces) -> None:
        self._device = device
        self._workspaces = workspaces
        self._done = False

    def __call__(self, name: str) -> None:
        if not self._done:
            self._done = True
            self._device.allocate(self._workspaces.cublas, "cuBLAS workspace")
            self._device.allocate(self._workspaces.cublaslt, "cuBLASLt workspace")


class HostBoundary(TorchFunctionMode):
    """Values of meta tensors read back to the host are zeros (see the module docstring)."""

    _READS = frozenset({torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item,
                        torch.Tensor.tolist})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "meta":
            tensor = args[0]
            if func in self._READS:
                zeros = torch.zeros(tensor.shape, dtype=tensor.dtype)
                if func is torch.Tensor.cpu:
                    return zeros
                return func(zeros, *args[1:], **kwargs)
            if func is torch.Tensor.to:
                device, dtype, *_ = torch._C._nn._parse_to(*args[1:], **kwargs)
                if device is not None and device.type == "cpu":
                    return torch.zeros(tensor.shape, dtype=dtype or tensor.dtype)
        return func(*args, **kwargs)


@contextmanager
def timesteps_on_host(pipe: Any) -> Iterator[None]:
    """Make the pipeline's scheduler keep its timesteps on the host, whatever device the
    pipeline asks for, and copy the host tensors the denoiser is called with to the device.

    The UNet copies a host timestep to its sample's device itself; the transformers of SD 3
    and Flux take it as the pipelines pass it (``t.expand(batch)``, Flux's ``/ 1000``), so
    here the copy is made as the call enters the model: one small block, where CUDA holds the
    same few bytes as a view or a result of the timesteps tensor.
    """
    scheduler = pipe.scheduler
    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def on_host(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        return set_timesteps(*args, **kwargs)

    def to_device(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            return value.to("meta")
        return value

    def inputs_to_device(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return (tuple(map(to_device, args)),
                {name: to_device(value) for name, value in kwargs.items()})

    handle = denoiser(pipe).register_forward_pre_hook(inputs_to_device, with_kwargs=True)
    scheduler.set_timesteps = on_host
    try:
        yield
    finally:
        del scheduler.set_timesteps
        handle.remove()
