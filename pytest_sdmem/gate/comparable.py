"""Whether two records of the same test may be compared, and what in two runs' environments
may explain a change.

Only like is compared with like: figures measured on another card or device type, generated
with other settings, or estimated rather than measured, are never compared (``unlike`` says
why), because a silent cross-card comparison would gate on noise. A different driver, torch,
CUDA or physical card is compared, with a warning (``environment_differences``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_sdmem.gate.results import TestRecord
from pytest_sdmem.gate.sections import GenerationSection


def _device_label(name: str) -> str:
    return repr(name) if name else "an unnamed device"


def _device_type(record: TestRecord, environment: dict[str, Any]) -> str:
    return str(record.device or environment.get("device") or "").split(":")[0]


def unlike(base: TestRecord, base_env: dict[str, Any], head: TestRecord,
           head_env: dict[str, Any]) -> str | None:
    """Why two records of the same test must not be compared, or ``None`` when they may be."""
    base_type, head_type = _device_type(base, base_env), _device_type(head, head_env)
    if base_type != head_type:
        return f"baseline measured on {base_type or '?'}, this run on {head_type or '?'}"
    base_name = base.device_name or base_env.get("device_name") or ""
    head_name = head.device_name or head_env.get("device_name") or ""
    if base_name != head_name:
        return (
            f"baseline measured on {_device_label(base_name)}, this run on "
            f"{_device_label(head_name)} (figures are never compared across cards)"
        )
    if base.is_estimate != head.is_estimate:
        which = "baseline" if base.is_estimate else "this run"
        return f"the {which}'s figures are estimates, the other's are measured"
    return _generation_difference(base.generation, head.generation)


def _generation_difference(base_section: GenerationSection | None,
                           head_section: GenerationSection | None) -> str | None:
    """How two records' generation settings differ (None: alike). A record without them from
    a file written before they were recorded cannot be shown to be alike: not comparable."""
    if base_section is None or head_section is None:
        if base_section is head_section:
            return None
        which = "the baseline" if base_section is None else "this run"
        return (f"{which} does not record the generation settings (written by an older "
                "pytest-sdmem): save a new baseline")
    base, head = base_section.to_dict(), head_section.to_dict()
    names = [*GENERATION_ORDER, *sorted((set(base) | set(head)) - set(GENERATION_ORDER))]
    diff = [n for n in names if base.get(n) != head.get(n)]
    if not diff:  # a setting one side writes as null and the other leaves out is no difference
        return None
    return ("generated differently: "
            + ", ".join(f"{n} {base.get(n)!r} in the baseline, {head.get(n)!r} now" for n in diff))


#: The order in which generation differences are named (any other field comes after).
GENERATION_ORDER = ("family", "model", "height", "width", "steps", "batch_size", "dtype",
                    "guidance_scale", "scheduler", "max_sequence_length", "safety_checker")


def _gpu_field(key: str) -> Callable[[dict[str, Any]], Any]:
    """Reads ``key`` of the environment's NVML description of the GPU (None without one)."""

    def read(env: dict[str, Any]) -> Any:
        gpu = env.get("gpu")
        return gpu.get(key) if isinstance(gpu, dict) else None

    return read


#: What can change every figure without any change in the code under test, and where a
#: results file's environment holds it. The GPU model is not here: figures of another model
#: are not compared at all (``unlike``).
_ENVIRONMENT_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("NVIDIA driver", lambda env: env.get("driver_version") or _gpu_field("driver")(env)),
    ("torch", lambda env: env.get("torch")),
    ("torch's CUDA", lambda env: env.get("cuda_version")),
    ("GPU (UUID: the physical card)", _gpu_field("uuid")),
)


def environment_differences(base_env: dict[str, Any], head_env: dict[str, Any]) -> list[str]:
    """A warning for each of driver, torch, CUDA and physical GPU that the baseline and this run
    both record and that differ: their figures are compared, but a change may come from there.
    A field either side lacks (an older results file) is not a difference."""
    warnings = []
    for label, read in _ENVIRONMENT_FIELDS:
        base, head = read(base_env), read(head_env)
        if base is not None and head is not None and base != head:
            warnings.append(f"the baseline and this run differ in {label}: {base} vs {head}; "
                            "a change in the figures may come from it")
    return warnings
