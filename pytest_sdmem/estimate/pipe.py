"""``sd_pipe`` under ``--sdmem-estimate``: the same handle as ``SdPipe``, whose calls estimate
the CUDA peak of the generation on meta tensors instead of running it.

What needs pixels or a clock (the images, ``latency``, ``speedup_over``, the output guard)
raises ``NeedsRealRun``, which the plugin turns into a skip naming what needed the real run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_sdmem.base.errors import NeedsRealRun
from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.building.runner import ImageDiff
from pytest_sdmem.building.techniques import TechniqueSet, parse_technique
from pytest_sdmem.measuring.speedup import SpeedupResult
from pytest_sdmem.measuring.timing import TimingResult


@dataclass(frozen=True)
class EstimatedImages:
    """The images of an estimated generation: a shape and no pixels.

    A test that only generates is estimated; one that looks at the pixels is skipped with the
    reason, rather than asserting on images that were never computed.
    """

    shape: tuple[int, int, int, int]

    def __getattr__(self, name: str) -> Any:
        raise NeedsRealRun(f"the images of an estimated generation have no pixels "
                           f"(.{name} was asked for): run without --sdmem-estimate")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise NeedsRealRun("the images of an estimated generation have no pixels: "
                           "run without --sdmem-estimate")

    def __getitem__(self, key: Any) -> Any:
        return self.__array__()

    def __len__(self) -> int:
        return self.shape[0]


class EstimatedSdPipe:
    """``sd_pipe`` under ``--sdmem-estimate``: each call estimates the CUDA peak of the
    generation on meta tensors (see ``pytest_sdmem.estimate``) instead of running it."""

    last_latency: TimingResult | None = None  # an estimate has no timings

    @property
    def pipe(self) -> Any:
        raise self._unavailable("the diffusers pipeline (sd_pipe.pipe)")

    def __init__(self, model: str, technique: TechniqueSet, defaults: GenerationArgs,
                 *, safety_checker: bool = True, gpu: str | None = None) -> None:
        from pytest_sdmem.estimate.report import ESTIMATED_DEVICE

        self.model = model
        self.technique = technique
        self.defaults = defaults
        self.device = ESTIMATED_DEVICE
        self.safety_checker = safety_checker
        self.gpu = gpu  # the card the estimates stand for (--sdmem-estimate-for)
        self.last_args: GenerationArgs | None = None
        self.estimates: list[Any] = []

    def __call__(self, **overrides: Any) -> EstimatedImages:
        from pytest_sdmem.estimate.run import estimate_generation

        args = self.defaults.with_overrides(**overrides)
        self.estimates.append(estimate_generation(self.model, self.technique, args,
                                                  safety_checker=self.safety_checker,
                                                  gpu=self.gpu))
        self.last_args = args
        return EstimatedImages((args.batch_size, args.height, args.width, 3))

    def _unavailable(self, what: str) -> NeedsRealRun:
        return NeedsRealRun(f"{what} needs a real run: skipped with --sdmem-estimate")

    def latency(self, **kwargs: Any) -> TimingResult:
        raise self._unavailable("sd_pipe.latency()")

    def assert_matches_baseline(self, baseline: str = "none", **overrides: Any) -> ImageDiff:
        raise self._unavailable("an output guard (assert_matches_baseline)")

    def speedup_over(self, baseline: str, **kwargs: Any) -> SpeedupResult:
        raise self._unavailable("min_speedup")

    def fresh(self, technique: str, **overrides: Any) -> EstimatedSdPipe:
        return EstimatedSdPipe(self.model, parse_technique(technique),
                               self.defaults.with_overrides(**overrides),
                               safety_checker=self.safety_checker, gpu=self.gpu)

    def release(self) -> None:
        self.estimates.clear()

    def __enter__(self) -> EstimatedSdPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
