"""The session's validated settings, from the option values.

The values come converted by their kinds (``plugin.options``: bools, positive numbers, sizes in
bytes, paths); what is checked here is how they go together and the defaults that depend on
each other. Every problem is a ``SettingsError`` whose message names the option, the value and
what is accepted (the plugin turns it into a usage error, exit code 4).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sdmem.base.units import parse_size
from pytest_sdmem.measuring.memory import normalize_device


class SettingsError(ValueError):
    """An option value that cannot be used; the message says which, why, and what is accepted."""


@dataclass(frozen=True)
class Settings:
    gpu: bool
    device: str
    model: str
    cache_dir: Path
    #: sd_pipe's default steps and image side (pixels, the height and the width) as the
    #: options set them; None: the model's (building.generation.generation_defaults, which
    #: needs the pipelines' catalogue).
    steps: int | None
    image_size: int | None
    max_time: float
    leak_threshold: int
    strict_leaks: bool
    json_path: Path | None
    budgets_path: Path | None = None
    save_path: Path | None = None
    compare_path: Path | None = None
    tolerance: str | None = None
    share_gpu: bool = False
    exclusive: bool = False
    snapshot_dir: Path | None = None
    estimate: bool = False
    estimate_for: str | None = None
    safety_checker: bool = False


def cuda_state() -> tuple[bool, int]:
    """Whether torch sees CUDA, and how many devices (imported lazily: torch is slow to import)."""
    import torch

    available = torch.cuda.is_available()
    return available, torch.cuda.device_count() if available else 0


@dataclass(frozen=True)
class Workers:
    """pytest-xdist's view: how many workers the controller starts, and which one this is."""

    count: int = 0
    index: int | None = None


def _device(raw: dict[str, Any], workers: Workers, cuda: Callable[[], tuple[bool, int]]) -> str:
    """The device this process measures.

    ``--gpu`` without a visible CUDA device is an error rather than a skip: a self-hosted runner
    that lost its GPU must go red instead of silently skipping the whole GPU tier. Under xdist
    each worker gets its own card (worker index = device index), so no two tests share a card
    and contaminate each other's peaks.
    """
    gpu = bool(raw.get("gpu"))
    share = bool(raw.get("sdmem_share_gpu"))
    explicit = raw.get("sdmem_device")
    try:
        device = normalize_device(explicit or ("cuda:0" if gpu else "cpu"))
    except ValueError:
        device = "meta"
    if device == "meta":  # measuring needs storage: meta is only the estimator's device
        raise SettingsError(f"--sdmem-device={explicit!r} is not valid: expected cpu, cuda or "
                            "cuda:N")
    if device.startswith("cuda") and not gpu:
        raise SettingsError(f"--sdmem-device={device} measures a GPU: add --gpu")
    if gpu and device == "cpu":
        raise SettingsError("--gpu with --sdmem-device=cpu: choose one (cuda:N, or drop --gpu)")
    if not gpu:
        return device
    available, count = cuda()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if not available:
        raise SettingsError(
            "--gpu was given but no CUDA device is visible "
            f"(torch.cuda.is_available() = False, CUDA_VISIBLE_DEVICES={visible}); "
            "run without --gpu for the CPU tier"
        )
    if workers.count > count and not share:
        raise SettingsError(
            f"-n {workers.count} starts more pytest-xdist workers than the {count} visible "
            f"CUDA device(s) (CUDA_VISIBLE_DEVICES={visible}): each worker needs a card of its "
            f"own for its peaks to be its own; use -n {count}, or --sdmem-share-gpu "
            "(memory budgets are then refused)"
        )
    if workers.index is not None and not explicit:
        device = f"cuda:{workers.index % count}"
    index = int(device.split(":")[1])
    if index >= count:
        raise SettingsError(
            f"--sdmem-device={device} but only {count} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={visible})"
        )
    return device


def build_settings(
    raw: dict[str, Any],
    default_cache: Path,
    cuda: Callable[[], tuple[bool, int]] = cuda_state,
    workers: Workers = Workers(),
) -> Settings:
    """Validate option values (``dest`` -> value of the option's kind) into ``Settings``."""
    gpu = bool(raw.get("gpu"))
    estimate = bool(raw.get("sdmem_estimate"))
    if estimate and gpu:
        raise SettingsError("--sdmem-estimate estimates the CUDA peak without a GPU; with --gpu "
                            "the peak is measured: use one or the other")
    estimate_for = (raw.get("sdmem_estimate_for") or "").strip() or None
    if estimate_for is not None and not estimate:
        raise SettingsError(f"--sdmem-estimate-for={estimate_for!r} names the GPU an estimate "
                            "stands for: it needs --sdmem-estimate (a measured run uses the "
                            "budgets of the GPU it runs on)")
    device = _device(raw, workers, cuda)
    model = raw.get("sdmem_model") or ("sd15" if gpu or estimate else "tiny")
    tiny = model == "tiny"
    steps = raw.get("sdmem_steps")
    size = raw.get("sdmem_size")
    leak_threshold = raw.get("sdmem_leak_threshold")
    if size is not None and size % 8:
        raise SettingsError(f"--sdmem-size={size} is not valid: expected a multiple of 8")
    exclusive = bool(raw.get("sdmem_exclusive"))
    if exclusive and not gpu:
        raise SettingsError("--sdmem-exclusive checks that no other process uses the GPU: it "
                            "needs --gpu")
    if exclusive and raw.get("sdmem_share_gpu"):
        raise SettingsError("--sdmem-exclusive and --sdmem-share-gpu contradict each other: a "
                            "shared GPU has other processes on it by design; choose one")
    return Settings(
        gpu=gpu,
        device=device,
        model=model,
        cache_dir=raw.get("sdmem_cache_dir") or default_cache.expanduser(),
        # An estimate describes the GPU run of the same test: same steps (the estimator itself
        # stops once the steps repeat, see estimate.run.stationary_steps).
        steps=steps,
        image_size=size,
        max_time=raw.get("sdmem_max_time") or 30.0,
        leak_threshold=leak_threshold if leak_threshold is not None else parse_size("4MB"),
        strict_leaks=bool(raw.get("sdmem_strict_leaks")),
        json_path=raw.get("sdmem_json"),
        budgets_path=raw.get("sdmem_budgets"),
        save_path=raw.get("sdmem_save"),
        compare_path=raw.get("sdmem_compare"),
        tolerance=raw.get("sdmem_tolerance") or None,
        share_gpu=bool(raw.get("sdmem_share_gpu")),
        exclusive=exclusive,
        snapshot_dir=raw.get("sdmem_snapshot_dir"),
        estimate=estimate,
        estimate_for=estimate_for,
        safety_checker=not raw.get("sdmem_no_safety_checker") and not tiny,
    )
