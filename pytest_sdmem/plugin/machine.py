"""The machine the figures come from: pytest-xdist's layout, whether the GPU is the session's
alone, the warm-up whose leftovers every absolute peak includes, and the terminal header."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.settings import Settings, Workers

if TYPE_CHECKING:
    from pytest_sdmem.measuring.memory import MemoryBackend
    from pytest_sdmem.measuring.memory.cuda import MachineCheck


class SdmemMachineWarning(UserWarning):
    """The GPU is not the session's alone, or that could not be checked."""


def workers_of(config: pytest.Config) -> Workers:
    """pytest-xdist's layout: workers started by this controller, or this worker's index."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return Workers(count=int(workerinput.get("workercount", 0)),
                       index=int(str(workerinput["workerid"]).removeprefix("gw")))
    distributed = getattr(config.option, "dist", "no") != "no"
    return Workers(count=len(getattr(config.option, "tx", None) or []) if distributed else 0)


def runs_tests(workers: Workers) -> bool:
    """Whether this process runs tests: a lone pytest or an xdist worker, not a controller."""
    return workers.index is not None or workers.count == 0


def machine_action(problem: str | None, settings: Settings, workers: Workers) -> str | None:
    """What a machine check's ``problem`` does to the session: "refuse" (``--sdmem-exclusive``:
    the xdist controller refuses before any worker starts), "warn" (once, by the process that
    measures), or None (no problem; or ``--sdmem-share-gpu``, where the other workers are on
    the card by design and the check is only recorded)."""
    if problem is None or settings.share_gpu:
        return None
    if settings.exclusive:
        return "refuse"
    return "warn" if runs_tests(workers) else None


def warms_up(settings: Settings, workers: Workers) -> bool:
    """Whether this process warms its CUDA device up before the first test (see
    ``memory.cuda.warm_up``): only a process that measures on a real GPU (``--gpu``, which an
    estimate never has)."""
    return settings.gpu and runs_tests(workers)


def session_baseline(backend: MemoryBackend, warm_up: Callable[[], None],
                     what: str) -> dict[str, Any]:
    """Run ``warm_up`` and record what it left on the device: the session's baseline.

    What stays allocated after a settle is per-process state (library workspaces) that every
    later absolute peak includes; the record says how much, once, so no test is blamed for it.
    """
    backend.settle()
    before = backend.allocated()
    warm_up()
    backend.settle()
    after = backend.allocated()
    return {"device": backend.device, "allocated_bytes": after,
            "added_by_warm_up_bytes": after - before, "reserved_bytes": backend.reserved(),
            "warm_up": what}


def check_machine(config: pytest.Config, settings: Settings, workers: Workers) -> MachineCheck:
    """NVML's view of the device; another process on it is a warning, or with
    ``--sdmem-exclusive`` a usage error naming it (so is a check that cannot be made).
    Under ``--sdmem-share-gpu`` the other workers are there by design: only recorded."""
    import torch

    from pytest_sdmem.measuring.memory.cuda import (
        MachineCheck,
        check_machine,
        device_index,
        load_nvml,
    )

    device = settings.device
    own = {os.getpid()} | ({os.getppid()} if workers.index is not None else set())
    try:  # CUDA_VISIBLE_DEVICES may renumber or name (by UUID) the devices NVML sees
        nvml_index = torch.cuda._get_nvml_device_index(device_index(device))
    except RuntimeError as exc:
        check = MachineCheck(None, f"cannot check that no other process uses {device}: "
                                   f"its NVML index is unknown ({exc})")
    else:
        check = check_machine(device, nvml_index, load_nvml(), own)
    action = machine_action(check.problem, settings, workers)
    if action == "refuse":
        raise pytest.UsageError(f"pytest-sdmem: {check.problem} (--sdmem-exclusive)")
    if action == "warn":
        config.issue_config_time_warning(SdmemMachineWarning(check.problem), stacklevel=2)
    return check


def environment_header(device: str, env: dict[str, Any]) -> list[str]:
    """The terminal header's lines: the GPU the figures come from (what ``--sdmem-compare``
    needs alike), and the session baseline that every absolute peak includes."""
    lines = []
    if gpu := env.get("gpu"):
        def part(label: str, *values: Any, unit: str = "") -> str | None:
            if all(v is None for v in values):
                return None
            return f"{label} {'/'.join('?' if v is None else str(v) for v in values)}{unit}"

        parts = [part("driver", gpu["driver"]), part("CUDA driver", gpu["cuda_driver"]),
                 part("torch", env.get("torch")), part("CUDA", env.get("cuda_version")),
                 part("SM clock", gpu["sm_clock_mhz"], gpu["sm_clock_max_mhz"], unit=" MHz"),
                 part("memory clock", gpu["memory_clock_mhz"], gpu["memory_clock_max_mhz"],
                      unit=" MHz"),
                 part("power limit", gpu["power_limit_w"], unit=" W"),
                 part("ECC", gpu["ecc"]), part("MIG", gpu["mig"])]
        lines.append(f"sdmem: {device} {gpu['name']} ({gpu['uuid']}): "
                     + ", ".join(p for p in parts if p is not None))
    if (card := env.get("estimate_gpu")) is not None:
        lines.append(f"sdmem: estimates stand for {card}"
                     + ("" if env.get("estimate_for") else " (the default; --sdmem-estimate-for)"))
    if (baseline := env.get("session_baseline")) is not None:
        lines.append(
            f"sdmem: session baseline on {baseline['device']}: "
            f"{format_size(baseline['allocated_bytes'])} allocated after the warm-up "
            f"({baseline['warm_up']}); every absolute peak includes it")
    return lines
