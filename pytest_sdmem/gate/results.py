"""The record of a run: one ``TestRecord`` per measured test, the environment, and the JSON file.

The JSON shape is a contract with the tools that read it later (baseline comparison, reports,
CI dashboards), so it carries a ``schema_version`` and is written atomically: a reader never
sees half a file, and an interrupted run never leaves a truncated baseline behind.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_sdmem.base.atomic import write_atomic
from pytest_sdmem.base.userfiles import MAX_RESULTS_BYTES, UserFileError, read_user_file

SCHEMA_VERSION = 1

_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "xformers", "pytest_sdmem")


class ResultsError(ValueError):
    """A results file that cannot be read as this schema; the message names the file and why."""


@dataclass
class TestRecord:
    """Everything measured for one test, in the units of the JSON file (bytes, seconds)."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    outcome: str = "unknown"
    device: str = "cpu"
    device_name: str = ""
    model: str | None = None
    technique: str | None = None
    memory: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    speedup: dict[str, Any] | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    estimated: bool = False
    estimate: dict[str, Any] | None = None
    duration_s: float | None = None
    leak_bytes: int | None = None
    snapshot: dict[str, Any] | None = None
    #: The settings of the test's last sd_pipe generation that change its figures (see
    #: ``runner.generation_settings``); None for a test without sd_pipe. Figures of different
    #: generations are never compared.
    generation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def collect_environment(device: str, device_name: str, total_memory: int | None) -> dict[str, Any]:
    """Describe where the figures were measured, so a baseline is only compared like for like."""
    env: dict[str, Any] = {
        "device": device,
        "device_name": device_name,
        "total_memory_bytes": total_memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "allocator_config": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        or os.environ.get("PYTORCH_ALLOC_CONF"),
    }
    env.update({name: _version(name) for name in _PACKAGES})
    try:
        import torch

        env["cuda_version"] = torch.version.cuda
        if device.startswith("cuda"):
            env["cudnn_version"] = torch.backends.cudnn.version()
            env["driver_version"] = _nvml_driver_version()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return env


def _nvml_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - NVML failing must not fail the run; the field stays empty
        return None


@dataclass
class RunResults:
    """The whole session: environment plus one record per measured test."""

    environment: dict[str, Any]
    results: list[TestRecord] = field(default_factory=list)
    #: Whether the session ran to its end; a file of one that did not (interrupted, stopped by
    #: -x, a collection error) says why in ``incomplete_reason`` and is never a baseline.
    #: Files written before this field existed read as complete.
    complete: bool = True
    incomplete_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "complete": self.complete}
        if not self.complete:
            data["incomplete_reason"] = self.incomplete_reason
        return {**data, "environment": self.environment,
                "results": [r.to_dict() for r in self.results]}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temporary file in the same directory, then ``os.replace``."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunResults:
        """Read a results file, refusing anything that is not this schema with a clear reason."""
        path = Path(path)
        try:
            text = read_user_file(path, "results file", MAX_RESULTS_BYTES).decode("utf-8")
        except UserFileError as exc:
            raise ResultsError(f"{path}: {exc.problem}") from exc
        except UnicodeDecodeError as exc:
            raise ResultsError(f"{path}: not a pytest-sdmem results file (not UTF-8 text: "
                               f"{exc})") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        except RecursionError:
            raise ResultsError(f"{path}: not a results file (its JSON nests deeper than Python "
                               "can parse)") from None
        except ValueError as exc:  # an integer literal of more digits than Python converts
            raise ResultsError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or "results" not in data or "schema_version" not in data:
            raise ResultsError(
                f"{path}: not a pytest-sdmem results file (expected an object with "
                "'schema_version', 'environment' and 'results')"
            )
        if data["schema_version"] != SCHEMA_VERSION:
            raise ResultsError(
                f"{path}: schema_version {data['schema_version']!r} is not supported "
                f"(this pytest-sdmem reads version {SCHEMA_VERSION})"
            )
        if not isinstance(data["results"], list) or not all(
            isinstance(r, dict) and "nodeid" in r for r in data["results"]
        ):
            raise ResultsError(f"{path}: 'results' must be a list of objects with a 'nodeid'")
        complete = data.get("complete", True)
        if not isinstance(complete, bool):
            raise ResultsError(f"{path}: 'complete' must be true or false")
        return cls(
            environment=dict(data.get("environment") or {}),
            results=[TestRecord.from_dict(r) for r in data["results"]],
            complete=complete,
            incomplete_reason=None if complete else str(data.get("incomplete_reason")),
        )


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Serialise ``data`` to ``path`` so that readers see either the old or the new file whole."""
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
