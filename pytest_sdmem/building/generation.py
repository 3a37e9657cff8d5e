"""What one generation is: its inputs (:class:`GenerationArgs`) and the scheduler swap they may
ask for. Both the real runner and the estimator run generations, so this sits below both of them
(the estimator must not import the runner, which imports the estimator for ``--sdmem-estimate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from pytest_sdmem.building.pipelines import (
    DEFAULT_PROMPT,
    SYNTHETIC_MODELS,
    TINY_MODELS,
    family_of,
    get_spec,
)
from pytest_sdmem.building.techniques import ApplyContext, Pipe


@dataclass(frozen=True)
class GenerationArgs:
    """One generation's inputs. The defaults are the guide's: its prompt, 512x512, 50 steps,
    one image, guidance 7.5; the fixture starts from its model's (:func:`generation_defaults`).
    """

    prompt: str = DEFAULT_PROMPT
    num_inference_steps: int = 50
    height: int = 512
    width: int = 512
    batch_size: int = 1
    seed: int = 0
    guidance_scale: float = 7.5
    #: A diffusers scheduler class name (e.g. "UniPCMultistepScheduler"), built from the
    #: pipeline's scheduler config; None keeps the model's own (the guide's 4K claim uses UniPC).
    scheduler: str | None = None
    #: Called by diffusers at the end of each denoising step, as its ``callback_on_step_end``
    #: (a function or a ``PipelineCallback``); ``SdPipe.latency`` times the steps around it.
    callback_on_step_end: Callable[..., Any] | None = None
    #: The T5 prompt length of the families with a T5 encoder (SD 3, Flux); None for the
    #: others, whose pipelines take no such argument.
    max_sequence_length: int | None = None

    def with_overrides(self, **overrides: Any) -> GenerationArgs:
        """These args with some replaced; an unknown name is a TypeError listing the known ones,
        so that ``sd_pipe(steps=4)`` fails instead of silently running the default 50."""
        known = [f.name for f in fields(self)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise TypeError(f"unknown generation argument(s) {', '.join(unknown)}: accepted "
                            f"{', '.join(known)}")
        return replace(self, **overrides)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The StableDiffusionPipeline call arguments of this generation (without the
        generator and output type, which depend on where it runs): one place, so the runner,
        the estimator and the GPU comparison script call the pipeline the same way."""
        kwargs = {"prompt": self.prompt, "num_inference_steps": self.num_inference_steps,
                  "height": self.height, "width": self.width,
                  "num_images_per_prompt": self.batch_size, "guidance_scale": self.guidance_scale}
        if self.callback_on_step_end is not None:
            kwargs["callback_on_step_end"] = self.callback_on_step_end
        if self.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.max_sequence_length
        return kwargs

    def context(self, device: str) -> ApplyContext:
        """What the techniques are set up for (jit_trace traces these shapes)."""
        return ApplyContext(device=device, height=self.height, width=self.width,
                            batch_size=self.batch_size, steps=self.num_inference_steps,
                            guidance_scale=self.guidance_scale,
                            max_sequence_length=self.max_sequence_length)

    def __str__(self) -> str:
        return (f"{self.batch_size} image(s) {self.width}x{self.height}, "
                f"{self.num_inference_steps} steps, seed {self.seed}, "
                f"guidance {self.guidance_scale:g}")


#: The catalogue entry whose defaults a real model of each family gets.
_FAMILY_MODELS: dict[str, str] = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl", "sd3": "sd3",
                                  "flux": "flux-dev"}
#: sd_pipe's steps for SD 1.x/2.x on a GPU: fewer than the pipelines' 50, so that the GPU tier
#: fits its time (docs/gpu-time-budget.md); the tiny models run 2.
SD_TEST_STEPS = 25
TINY_TEST_STEPS = 2


def generation_defaults(model: str, *, steps: int | None = None,
                        size: int | None = None) -> GenerationArgs:
    """sd_pipe's default generation for ``model``: its family's defaults as diffusers has them
    (guidance, size, T5 length), with ``steps``/``size`` when the options set them. Steps
    otherwise: 2 for the tiny models, 25 for SD 1.x/2.x, the family's for SDXL, SD 3 and
    Flux. A real model's family is read from its model_index.json (ModelError if it cannot be).
    """
    family = family_of(model)
    spec = get_spec(model if model in SYNTHETIC_MODELS else _FAMILY_MODELS[family])
    defaults = spec.defaults
    if steps is None:
        steps = (TINY_TEST_STEPS if model in TINY_MODELS.values()
                 else SD_TEST_STEPS if family in ("sd1", "sd2") else defaults.num_inference_steps)
    return GenerationArgs(
        num_inference_steps=steps,
        height=size or defaults.height,
        width=size or defaults.width,
        guidance_scale=defaults.guidance_scale,
        max_sequence_length=defaults.max_sequence_length,
    )


def use_scheduler(pipe: Pipe, name: str) -> None:
    """Give ``pipe`` the diffusers scheduler class ``name``, from its current scheduler's config
    (the same betas and timestep spacing, as diffusers' docs swap schedulers)."""
    import diffusers

    if type(pipe.scheduler).__name__ == name:
        return
    cls = getattr(diffusers, name, None)
    if isinstance(cls, type) and not issubclass(cls, diffusers.SchedulerMixin):
        # diffusers exports a placeholder when a scheduler's extra package is missing.
        raise TypeError(f"scheduler {name!r} is not available: diffusers needs an extra package "
                        "for it (LMSDiscreteScheduler needs scipy, for example)")
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
        raise TypeError(f"unknown scheduler {name!r}: accepted diffusers scheduler classes "
                        f"{', '.join(known)}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
