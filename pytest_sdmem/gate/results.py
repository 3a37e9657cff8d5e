"""The record of a run: one ``TestRecord`` per measured test, the environment, and the JSON file.

The JSON shape is a contract with the tools that read it later (baseline comparison, reports,
CI dashboards), so it carries a ``schema_version`` and is written atomically: a reader never
sees half a file, and an interrupted run never leaves a truncated baseline behind.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_sdmem.base.atomic import write_atomic
from pytest_sdmem.base.userfiles import MAX_RESULTS_BYTES, UserFileError, read_user_file
from pytest_sdmem.gate.sections import (
    BudgetSection,
    EstimateSection,
    GenerationSection,
    LatencySection,
    MemorySection,
    S,
    Section,
    SectionError,
    SnapshotSection,
    SpeedupSection,
    VerdictSection,
)

SCHEMA_VERSION = 1

_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "xformers", "pytest_sdmem")


class ResultsError(ValueError):
    """A results file that cannot be read as this schema; the message names the file and why."""


@dataclass
class TestRecord:
    """Everything measured for one test, in the units of the JSON file (bytes, seconds).

    The fields are written under their own names, except ``is_estimate`` ("estimated") and
    ``estimate_details`` ("estimate"), whose JSON keys predate the names.
    """

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    outcome: str = "unknown"
    device: str = "cpu"
    device_name: str = ""
    model: str | None = None
    technique: str | None = None
    memory: MemorySection | None = None
    budget: BudgetSection | None = None
    latency: LatencySection | None = None
    speedup: SpeedupSection | None = None
    verdicts: list[VerdictSection] = field(default_factory=list)
    #: Whether the figures are an estimate (``--sdmem-estimate``), not a measurement.
    is_estimate: bool = False
    #: How the estimate was made; None for a measured test.
    estimate_details: EstimateSection | None = None
    duration_s: float | None = None
    leak_bytes: int | None = None
    snapshot: SnapshotSection | None = None
    #: None for a test without sd_pipe. Figures of different generations are never compared.
    generation: GenerationSection | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {_JSON_KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}
        values["verdicts"] = [v.to_dict() for v in self.verdicts]
        return {k: v.to_dict() if isinstance(v, Section) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestRecord:
        """The record of a JSON object; a ``SectionError`` names the first field that the
        comparison or the reports could not read. Keys this version does not know are left out.
        """
        for name in ("nodeid", "outcome", "device"):
            if name in data and not isinstance(data[name], str):
                raise SectionError(f"{name} is not a string")
        for name in ("model", "technique", "device_name"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise SectionError(f"{name} is not a string")
        sections = {name: _section(kind, data, name) for name, kind in _FIGURES.items()}
        estimated = data.get("estimated", False)
        if not isinstance(estimated, bool):
            raise SectionError("estimated is not true or false")
        estimate = _section(EstimateSection, data, "estimate")
        generation = _section(GenerationSection, data, "generation")
        snapshot = _section(SnapshotSection, data, "snapshot")
        verdicts = data.get("verdicts", [])
        if not isinstance(verdicts, list) or not all(
            isinstance(v, dict) and isinstance(v.get("kind"), str) for v in verdicts
        ):
            raise SectionError("verdicts is not a list of objects with a 'kind'")
        return cls(
            **{name: data[name] for name in _PLAIN if name in data},
            **sections,
            is_estimate=estimated,
            estimate_details=estimate,
            generation=generation,
            snapshot=snapshot,
            verdicts=[VerdictSection.from_dict(v, "verdicts") for v in verdicts],
        )


def _section(kind: type[S], data: dict[str, Any], name: str) -> S | None:
    return None if data.get(name) is None else kind.from_dict(data[name], name)


#: The record's fields whose JSON key is not their name.
_JSON_KEYS = {"is_estimate": "estimated", "estimate_details": "estimate"}
#: The sections of the figures that are compared and reported, in the order they are checked.
_FIGURES: dict[str, type[Section]] = {
    "memory": MemorySection, "budget": BudgetSection, "latency": LatencySection,
    "speedup": SpeedupSection,
}
#: The record's fields that are plain JSON values.
_PLAIN = ("nodeid", "outcome", "device", "device_name", "model", "technique", "duration_s",
          "leak_bytes")


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
        environment = dict(data.get("environment") or {})
        records = []
        for i, record in enumerate(data["results"]):
            try:
                records.append(TestRecord.from_dict(record))
            except SectionError as exc:
                raise ResultsError(f"{path}: results[{i}].{exc}") from None
        return cls(
            environment=environment,
            results=records,
            complete=complete,
            incomplete_reason=None if complete else str(data.get("incomplete_reason")),
        )


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Serialise ``data`` to ``path`` so that readers see either the old or the new file whole."""
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
