"""What one generation is: its inputs (:class:`GenerationArgs`) and the scheduler swap they may
ask for. Both the real runner and the estimator run generations, so this sits below both of them
(the estimator must not import the runner, which imports the estimator for ``--sdmem-estimate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from pytest_sdmem.building.pipelines import DEFAULT_PROMPT
from pytest_sdmem.building.techniques import ApplyContext, Pipe


@dataclass(frozen=True)
class GenerationArgs:
    """One generation's inputs. The defaults are the guide's: its prompt, 512x512, 50 steps,
    one image, guidance 7.5; the fixture overrides steps and size from the options."""

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
        return kwargs

    def context(self, device: str) -> ApplyContext:
        """What the techniques are set up for (jit_trace traces these shapes)."""
        return ApplyContext(device=device, height=self.height, width=self.width,
                            batch_size=self.batch_size, steps=self.num_inference_steps,
                            guidance_scale=self.guidance_scale)

    def __str__(self) -> str:
        return (f"{self.batch_size} image(s) {self.width}x{self.height}, "
                f"{self.num_inference_steps} steps, seed {self.seed}, "
                f"guidance {self.guidance_scale:g}")


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
