"""Run a real Stable Diffusion pipeline under a technique: the object behind the ``sd_pipe``
fixture, in plain Python so that it can be used (and tested) without pytest.

An :class:`SdPipe` holds one diffusers pipeline with its techniques applied. Calling it runs one
seeded generation and returns the images as numpy arrays; it can time itself, measure its speed-up
over another technique, and check that its images still match a baseline technique's, which a
memory or speed gate needs (group offloading once produced wrong images: diffusers issues 11981
and 12673).
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import numpy as np
import torch

from pytest_sdmem.building.generation import GenerationArgs, use_scheduler
from pytest_sdmem.building.noise import float32_noise
from pytest_sdmem.building.pipelines import (
    SYNTHETIC_MODELS,
    ensure_cached,
    family_of,
    get_spec,
    load_pipeline,
)
from pytest_sdmem.building.techniques import (
    OutputTolerance,
    Pipe,
    TechniqueError,
    TechniqueSet,
    apply_techniques,
    family_refusals,
    parse_technique,
    unmet_requirements,
)
from pytest_sdmem.measuring.speedup import SpeedupResult
from pytest_sdmem.measuring.stats import median
from pytest_sdmem.measuring.timing import (
    LatencyBreakdown,
    PartTimes,
    Sync,
    TimingResult,
    measure,
    measure_speedup,
    synchronizer,
)


class UnmetRequirementError(TechniqueError):
    """A technique cannot run here; ``reasons`` are the skip reasons of ``unmet_requirements``."""

    def __init__(self, ts: TechniqueSet, device: str, reasons: list[str]) -> None:
        super().__init__(f"technique {ts.expr!r} cannot run on {device}: {'; '.join(reasons)}")
        self.reasons = reasons


class Generates(Protocol):
    """What ``generation_settings`` reads of a pipeline handle: an ``SdPipe``, or the estimated
    one of ``pytest_sdmem.estimate.pipe``."""

    technique: TechniqueSet
    defaults: GenerationArgs
    last_args: GenerationArgs | None


def generation_settings(pipe: Generates, model: str, safety_checker: bool) -> dict[str, Any]:
    """What the test's sd_pipe generated, as far as it changes the memory and speed figures:
    the record's ``generation``. Two records that differ here measured different work, so the
    baseline comparison never compares them. The prompt and the seed are left out: every
    prompt is padded to the CLIP encoders' 77 tokens (and T5's max_sequence_length, recorded),
    and noise values do not change the work. The last generation counts (the defaults if the
    test did not generate)."""
    args = pipe.last_args or pipe.defaults
    if model in SYNTHETIC_MODELS and not get_spec(model).has_safety_checker:
        safety_checker = False  # SD 2.1, SDXL, SD 3 and Flux ship none
    return {"family": family_of(model), "model": model, "height": args.height,
            "width": args.width, "steps": args.num_inference_steps,
            "batch_size": args.batch_size, "guidance_scale": args.guidance_scale,
            "scheduler": args.scheduler, "max_sequence_length": args.max_sequence_length,
            "dtype": str(pipe.technique.dtype).removeprefix("torch."),
            "safety_checker": safety_checker}


#: Builds a fresh pipeline with a technique set applied, for the given generation.
Loader = Callable[[TechniqueSet, GenerationArgs], Pipe]


@dataclass(frozen=True)
class ImageDiff:
    """Per-pixel absolute differences of two image batches against a tolerance."""

    max_abs: float
    mean_abs: float
    tolerance: OutputTolerance

    @property
    def ok(self) -> bool:
        # Written so that NaN (a non-finite image) fails: every comparison with NaN is False.
        return self.max_abs <= self.tolerance.max_abs and self.mean_abs <= self.tolerance.mean_abs

    def __str__(self) -> str:
        return (f"max abs diff {self.max_abs:.3g} (tolerance {self.tolerance.max_abs:g}), "
                f"mean abs diff {self.mean_abs:.3g} (tolerance {self.tolerance.mean_abs:g})")


def compare_images(actual: np.ndarray, expected: np.ndarray,
                   tolerance: OutputTolerance) -> ImageDiff:
    """The differences of two batches of images in [0, 1]; a shape mismatch is a ValueError."""
    if actual.shape != expected.shape:
        raise ValueError(f"cannot compare images of shape {actual.shape} with {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return ImageDiff(float(diff.max()), float(diff.mean()), tolerance)


@dataclass(frozen=True)
class PipelineLoader:
    """The :data:`Loader` of :func:`make_sd_pipe`: load ``model`` in the set's dtype (the fp16 /
    bf16 of the guide is a load-time choice), then apply the set for ``device``. A set the
    device cannot run is an UnmetRequirementError (a skip), one with a technique the model's
    family refuses a TechniqueError (the plugin decides both at collection; this is the
    backstop)."""

    model: str
    cache_dir: Path
    device: str
    safety_checker: bool = False

    def __call__(self, ts: TechniqueSet, args: GenerationArgs) -> Pipe:
        reasons = unmet_requirements(ts, self.device)
        if reasons:
            raise UnmetRequirementError(ts, self.device, reasons)
        refused = family_refusals(ts, family_of(self.model))
        if refused:  # before loading: a technique the model cannot take is never a no-op
            raise TechniqueError(f"technique {ts.expr!r} cannot apply to model "
                                 f"{self.model!r}: {'; '.join(refused)}")
        pipe = load_pipeline(self.model, dtype=ts.dtype, cache_dir=self.cache_dir,
                             safety_checker=self.safety_checker, device=self.device)
        return apply_techniques(pipe, ts, args.context(self.device))


@dataclass
class _CallParts:
    """The parts of one generation as the instrumented pipeline reported them (seconds)."""

    text_encoding: float = 0.0
    vae_decode: float = 0.0
    steps: list[float] = field(default_factory=list)
    #: When the current denoising step began: the end of the text encoding, then of each step.
    step_start: float | None = None


class _PartClock:
    """Times a generation's parts while installed on a pipeline: ``encode_prompt`` and
    ``vae.decode`` are wrapped, and each step ends in a ``callback_on_step_end`` that chains to
    the user's. The device is synchronized around every reading, so a part's figure holds its
    own kernels and no others."""

    def __init__(self, sync: Sync) -> None:
        self._sync = sync
        self.calls: list[_CallParts] = []

    def _now(self) -> float:
        self._sync()
        return perf_counter()

    def _timed(self, part: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            call = self.calls[-1]
            start = self._now()
            result = method(*args, **kwargs)
            end = self._now()
            setattr(call, part, getattr(call, part) + end - start)
            if part == "text_encoding":
                call.step_start = end  # the denoising loop follows the prompt's encoding
            return result
        return timed

    @contextlib.contextmanager
    def installed(self, pipe: Pipe) -> Iterator[None]:
        """Wrap the pipeline's text encoding and VAE decode while the block runs; the methods
        are restored afterwards, whatever happens."""
        wrapped = [(pipe, "encode_prompt", "text_encoding"), (pipe.vae, "decode", "vae_decode")]
        saved = [(owner, name, vars(owner).get(name)) for owner, name, _ in wrapped]
        try:
            for owner, name, part in wrapped:
                setattr(owner, name, self._timed(part, getattr(owner, name)))
            yield
        finally:
            for owner, name, before in saved:
                if before is None:
                    delattr(owner, name)  # the class's method shows through again
                else:
                    setattr(owner, name, before)

    def begin_call(self, kwargs: dict[str, Any]) -> None:
        """Start a generation's record (parts are reset for each call) and put the step clock
        in its pipeline ``kwargs``, chained before the user's ``callback_on_step_end``."""
        call = _CallParts()
        self.calls.append(call)
        user = kwargs.get("callback_on_step_end")

        def on_step_end(pipe: Any, step: int, timestep: Any,
                        callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            end = self._now()
            if call.step_start is not None:
                call.steps.append(end - call.step_start)
            call.step_start = end
            return callback_kwargs if user is None else user(pipe, step, timestep,
                                                             callback_kwargs)

        kwargs["callback_on_step_end"] = on_step_end
        if user is not None and hasattr(user, "tensor_inputs"):
            # diffusers reads a PipelineCallback's tensor inputs only from the callback itself.
            kwargs["callback_on_step_end_tensor_inputs"] = user.tensor_inputs

    def parts(self, rounds: int, confidence: float) -> dict[str, PartTimes | None]:
        """The last ``rounds`` generations' parts (the warm-up calls come before them)."""
        calls = self.calls[-rounds:]
        figures = {"per_step": [median(c.steps) for c in calls if c.steps],
                   "text_encoding": [c.text_encoding for c in calls if c.text_encoding],
                   "vae_decode": [c.vae_decode for c in calls if c.vae_decode]}
        return {name: PartTimes(tuple(times), confidence) if len(times) == len(calls) else None
                for name, times in figures.items()}


class SdPipe:
    """One pipeline with its technique applied, callable as ``sd_pipe(batch_size=4)``.

    ``loader`` builds the other techniques' pipelines that ``assert_matches_baseline`` and
    ``speedup_over`` compare with; without one they raise. Use as a context manager, or call
    :meth:`release`, to free the pipeline. ``load_time`` is how long building ``pipe`` took
    (``make_sd_pipe`` and :meth:`fresh` time their loader), reported by :meth:`latency`.
    """

    def __init__(self, pipe: Pipe, technique: TechniqueSet | str, device: str,
                 defaults: GenerationArgs | None = None, *, loader: Loader | None = None,
                 load_time: float | None = None) -> None:
        self.pipe: Pipe | None = pipe
        self.technique = (technique if isinstance(technique, TechniqueSet)
                          else parse_technique(technique))
        self.device = device
        self.defaults = defaults or GenerationArgs()
        self.last_args: GenerationArgs | None = None
        self.last_latency: TimingResult | None = None
        self.load_time = load_time
        #: The wall time of this pipeline's first generation: the cold one (None before it).
        self.first_call_time: float | None = None
        self._loader = loader
        self._sync = synchronizer(device)
        self._clock: _PartClock | None = None

    def __repr__(self) -> str:
        state = "released" if self.pipe is None else self.device
        return f"SdPipe({self.technique.expr!r}, {state})"

    def __enter__(self) -> SdPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __call__(self, **overrides: Any) -> np.ndarray:
        """One generation with the defaults updated by ``overrides`` (prompt,
        num_inference_steps, height, width, batch_size, seed, guidance_scale): float images of
        shape (batch_size, height, width, 3) in [0, 1].

        The generator lives on the device the pipeline computes on, seeded with ``seed``, and
        half-precision noise is drawn in float32 and cast (``noise.float32_noise``), so a
        technique and its baseline start from the same noise whatever their dtypes. The call
        returns only when the device is done (CUDA is synchronized), so any timer around it,
        pytest-benchmark's included, measures what a user waits for.
        """
        args = self.defaults.with_overrides(**overrides)
        if self.pipe is None:
            raise RuntimeError(f"{self!r}: the pipeline was released")
        if args.scheduler is not None:
            use_scheduler(self.pipe, args.scheduler)
        generator = torch.Generator(device=self.device).manual_seed(args.seed)
        kwargs = args.pipeline_kwargs()
        if self._clock is not None:
            self._clock.begin_call(kwargs)
        cold = self.first_call_time is None
        if cold:
            self._sync()
        start = perf_counter()
        with float32_noise():
            output = self.pipe(**kwargs, generator=generator, output_type="np")
        self._sync()
        if cold:
            self.first_call_time = perf_counter() - start
        self.last_args = args
        return np.asarray(output.images)

    def latency(self, *, max_time: float = 30.0, warmup: int = 1, min_rounds: int = 3,
                **overrides: Any) -> TimingResult:
        """Time whole generations (see ``timing.measure``) and where their time goes: the
        result's ``breakdown`` (see ``timing.LatencyBreakdown``) holds the pipeline's load, its
        first (cold) generation, and per measured round the median denoising step, the text
        encoding and the VAE decode. Those parts are read with the device synchronized around
        each, in the measured rounds themselves: on a GPU the rounds lose the overlap of the
        host queueing the next part while the device finishes the last. The result is also kept
        in ``last_latency`` for the results."""
        self.defaults.with_overrides(**overrides)  # a typo fails before any timing
        if self.pipe is None:
            raise RuntimeError(f"{self!r}: the pipeline was released")
        clock = _PartClock(self._sync)
        self._clock = clock
        try:
            with clock.installed(self.pipe):
                result = measure(lambda: self(**overrides), sync=self._sync,
                                 warmup=warmup, min_rounds=min_rounds, max_time=max_time)
        finally:
            self._clock = None
        breakdown = LatencyBreakdown(load=self.load_time, first_call=self.first_call_time,
                                     **clock.parts(result.rounds, result.confidence))
        result = replace(result, breakdown=breakdown)
        self.last_latency = result
        return result

    def fresh(self, technique: str, **overrides: Any) -> SdPipe:
        """A new SdPipe of the same model and device with another technique, set up for this
        generation (a baseline ``seed:traced_unet`` traces these shapes). Release it after use."""
        if self._loader is None:
            raise RuntimeError(f"{self!r} has no loader to build {technique!r} with: create it "
                               "with make_sd_pipe or pass loader=")
        args = self.defaults.with_overrides(**overrides)
        return _load(self._loader, parse_technique(technique), self.device, args)

    def assert_matches_baseline(self, baseline: str | SdPipe = "none",
                                **overrides: Any) -> ImageDiff:
        """Generate with this technique and with ``baseline`` (a fresh pipeline of that
        technique, or one the test already holds, so that a test comparing with the same
        baseline twice loads it once), same seed and inputs, and compare the images.

        The tolerance is the loosest of both sets' techniques (fp16 and tiling move pixels more
        than slicing). Raises AssertionError with both differences and the tolerance; returns
        them when within. The baseline pipeline exists next to this one while it runs: call
        this outside of memory-tracked blocks.
        """
        images = self(**overrides)
        if isinstance(baseline, SdPipe):
            expected = baseline(**overrides)
            base_technique = baseline.technique
        else:
            with self.fresh(baseline, **overrides) as base:
                expected = base(**overrides)
                base_technique = base.technique
        tolerance = self.technique.output_tolerance.loosest(base_technique.output_tolerance)
        diff = compare_images(images, expected, tolerance)
        if not diff.ok:
            raise AssertionError(
                f"images of {self.technique.expr!r} differ from baseline "
                f"{base_technique.expr!r}: {diff}; {self.defaults.with_overrides(**overrides)}"
            )
        return diff

    def speedup_over(self, baseline: str, *, factor: float, max_time: float = 30.0,
                     **overrides: Any) -> SpeedupResult:
        """Whether this technique is ``factor`` times faster than ``baseline`` (paired rounds,
        see ``timing.measure_speedup``), on the same generation. ``timing.TimeBudgetTooShort``
        when ``max_time`` cannot hold the pairs of a first verdict (named in its message)."""
        with self.fresh(baseline, **overrides) as base:
            return measure_speedup(lambda: self(**overrides), lambda: base(**overrides),
                                   factor=factor, sync=self._sync,
                                   max_time=max_time)

    def release(self) -> None:
        """Free the pipeline: remove accelerate's offload hooks (they hold the models and their
        CPU copies), drop the reference and collect the cycles hooks leave behind. Idempotent."""
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return
        pipe.remove_all_hooks()
        del pipe
        gc.collect()


def make_sd_pipe(model: str, technique_expr: str, device: str, cache_dir: Path | str,
                 defaults: GenerationArgs | None = None, *,
                 safety_checker: bool = False) -> SdPipe:
    """Load ``model`` (a synthetic model's name, a directory or a hub id) with ``technique_expr``
    applied for ``device``. A technique that cannot run there raises UnmetRequirementError
    (the plugin skips such tests at collection, so this is the backstop)."""
    defaults = defaults or GenerationArgs()
    if model in SYNTHETIC_MODELS and get_spec(model).cached:
        # Built before the load is timed: its load is from the cache.
        ensure_cached(model, Path(cache_dir), safety_checker=safety_checker, device=device)
    loader = PipelineLoader(model, Path(cache_dir), device, safety_checker)
    return _load(loader, parse_technique(technique_expr), device, defaults)


def _load(loader: Loader, ts: TechniqueSet, device: str, args: GenerationArgs) -> SdPipe:
    """Build an SdPipe with ``loader``, timing the build (device synchronized: the technique's
    weights must have arrived) as its ``load_time``."""
    sync = synchronizer(device)
    sync()
    start = perf_counter()
    pipe = loader(ts, args)
    sync()
    return SdPipe(pipe, ts, device, args, loader=loader, load_time=perf_counter() - start)
