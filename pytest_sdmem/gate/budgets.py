"""Budgets that depend on the card, kept out of the tests in a TOML file.

A memory or speed claim holds on one card and not on another: a 1.2x slowdown of model
offloading is "almost none" on the guide's Titan RTX but may not be on a card whose PCIe link is
slow next to its compute. So the suite names its budgets by key
(``@pytest.mark.max_vram(budget="sequential_offload")``) and a file holds the figures: a
``[default]`` table with the guide's numbers, and one table per GPU model, named exactly as
``torch.cuda.get_device_name()`` returns it, overriding some of them::

    [default]
    sequential_offload = "3 GB"       # a memory budget: a size string
    seed_fp16 = 1.32                  # a speed-up factor: a number

    ["NVIDIA H100 80GB HBM3"]
    seed_fp16 = 1.8

    [overhead."NVIDIA H100 80GB HBM3"]
    reserved = "416 MiB"
    process = "1056 MiB"
    calibrated = "sdmem calibrate, 12 tests, torch 2.11.0+cu128, 2026-11-25"

An ``overhead`` table per GPU model holds what a real run on that card shows beyond an estimate
made without it (``--sdmem-estimate``): ``reserved`` is added to the estimated reserved memory
for ``metric="reserved"`` budgets, ``process`` (the CUDA context, library handles) to it for
``metric="process"``; the allocated figure is never changed. Both come from ``sdmem calibrate``
over a real GPU run, and ``calibrated`` (required) says which, so a hand-made figure is visible.

The file is validated when loaded, so a typo is an error naming the file, the table and the key,
never a silently different budget: every size must parse, every factor must be a positive finite
number, a device table may only override keys that ``[default]`` defines, and with the same kind
of value (a size stays a size).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_sdmem.base.units import ACCEPTED_SIZES, UnitError, check_number, parse_size, shown
from pytest_sdmem.base.userfiles import MAX_BUDGETS_BYTES, UserFileError, read_user_file
from pytest_sdmem.estimate.report import Overhead

DEFAULT_TABLE = "default"
OVERHEAD_TABLE = "overhead"

#: The metrics of ``max_vram`` an overhead applies to; "allocated" is the estimate itself.
OVERHEAD_METRICS = ("reserved", "process")

Kind = Literal["size", "factor"]

_KIND_WORDS: dict[Kind, str] = {
    "size": "a memory budget (a size string such as \"3 GB\")",
    "factor": "a speed-up factor (a positive number such as 1.5)",
}


class BudgetError(ValueError):
    """A budgets file or lookup that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Budget:
    """One parsed value: bytes for a size, the factor for a speed-up; ``text`` as written."""

    kind: Kind
    value: int | float
    text: str


def read_budgets_text(path: Path) -> str:
    """The file's text, or a BudgetError saying why it cannot be read."""
    try:
        data = read_user_file(path, "budgets file", MAX_BUDGETS_BYTES)
    except UserFileError as exc:
        raise BudgetError(str(exc)) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BudgetError(f"budgets file {path} is not UTF-8 text: {exc}") from exc


def parse_toml(text: str, path: Path, what: str = "budgets file") -> dict[str, Any]:
    """The tables of ``text`` (the content of ``path``, a ``what``), or a BudgetError saying
    why not."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise BudgetError(
                f"{what} {path}: reading TOML on Python 3.10 needs tomli "
                "(pip install tomli)"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BudgetError(f"{what} {path} is not valid TOML: {exc}") from exc
    except RecursionError:
        raise BudgetError(f"{what} {path}: its TOML nests deeper than Python can parse") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise BudgetError(f"{what} {path} is not valid TOML: {exc}") from exc


def _parse_value(where: str, raw: Any) -> Budget:
    """A string is a size, a number a factor; anything else (booleans included) is an error."""
    if isinstance(raw, str):
        try:
            return Budget("size", parse_size(raw), repr(raw))
        except UnitError:
            raise BudgetError(
                f"{where} = {raw!r} is not a size; accepted: {ACCEPTED_SIZES}"
            ) from None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        try:
            factor = check_number(raw, "speed-up factor", positive=True)
        except UnitError as exc:
            raise BudgetError(f"{where}: {exc}") from None
        return Budget("factor", factor, repr(raw))
    raise BudgetError(
        f"{where} = {raw!r} is neither {_KIND_WORDS['size']} nor {_KIND_WORDS['factor']}"
    )


def _parse_overhead_size(where: str, raw: Any) -> int:
    """A size string, or 0 (a calibration can find nothing beyond the estimate)."""
    if raw == 0 and not isinstance(raw, bool):
        return 0
    try:
        return parse_size(raw)
    except UnitError:
        raise BudgetError(f"{where} = {shown(raw)} is not a size; accepted: 0 or "
                          f"{ACCEPTED_SIZES}") from None


def _parse_overheads(path: Path, raw: Any) -> dict[str, Overhead]:
    """The ``[overhead."DEVICE"]`` tables (see the module docstring)."""
    example = f'[{OVERHEAD_TABLE}."NVIDIA H100 80GB HBM3"]'
    if not isinstance(raw, dict) or not all(isinstance(t, dict) for t in raw.values()):
        raise BudgetError(f"budgets file {path}: [{OVERHEAD_TABLE}] holds one table per GPU "
                          f"model, e.g. {example}, with reserved, process and calibrated")
    overheads = {}
    for device, table in raw.items():
        where = f"budgets file {path} [{OVERHEAD_TABLE}.{device!r}]"
        unknown = sorted(set(table) - {*OVERHEAD_METRICS, "calibrated"})
        if unknown:
            raise BudgetError(f"{where} key(s) {', '.join(map(repr, unknown))} unknown; "
                              "accepted: reserved, process (sizes) and calibrated (a string)")
        calibrated = table.get("calibrated")
        if not isinstance(calibrated, str) or not calibrated.strip():
            raise BudgetError(f"{where} has no 'calibrated' string: say which GPU run the "
                              "figures come from (sdmem calibrate writes it)")
        if not any(metric in table for metric in OVERHEAD_METRICS):
            raise BudgetError(f"{where} gives neither 'reserved' nor 'process'")
        sizes = {metric: _parse_overhead_size(f"{where} key {metric!r}", table[metric])
                 if metric in table else None for metric in OVERHEAD_METRICS}
        overheads[device] = Overhead(device, sizes["reserved"], sizes["process"], calibrated)
    return overheads


def _table_name(name: str) -> str:
    return f"[{name}]" if name == DEFAULT_TABLE else f"[{name!r}]"


@dataclass(frozen=True)
class Budgets:
    """The budgets of one file: defaults, and per-device overrides keyed by device name."""

    path: Path
    defaults: Mapping[str, Budget]
    devices: Mapping[str, Mapping[str, Budget]]
    overheads: Mapping[str, Overhead] = field(default_factory=dict)

    @property
    def device_names(self) -> tuple[str, ...]:
        """Every GPU model the file names, in a budgets table or an overhead table."""
        return tuple(sorted({*self.devices, *self.overheads}))

    def overhead(self, device_name: str) -> Overhead | None:
        """The calibrated overhead of ``device_name``, or None when the file has none."""
        return self.overheads.get(device_name)

    @property
    def keys(self) -> tuple[str, ...]:
        """The known budget keys, sorted: those ``[default]`` defines."""
        return tuple(sorted(self.defaults))

    def lookup(self, key: str, device_name: str) -> tuple[Budget, str]:
        """The budget for ``key`` on ``device_name`` and the table it came from.

        The device's own table wins; a device without a table, or a key its table does not
        override, gets ``[default]``.
        """
        if key not in self.defaults:
            known = ", ".join(self.keys) or "(none)"
            raise BudgetError(f"unknown budget key {key!r} in {self.path}; known keys: {known}")
        override = self.devices.get(device_name, {}).get(key)
        if override is not None:
            return override, _table_name(device_name)
        return self.defaults[key], _table_name(DEFAULT_TABLE)

    def _get(self, key: str, device_name: str, kind: Kind) -> int | float:
        budget, table = self.lookup(key, device_name)
        if budget.kind != kind:
            raise BudgetError(
                f"budget {key!r} in {self.path} {table} is {_KIND_WORDS[budget.kind]}, "
                f"got {budget.text}; this marker needs {_KIND_WORDS[kind]}"
            )
        return budget.value

    def vram(self, key: str, device_name: str) -> int:
        """The memory budget ``key`` for ``device_name``, in bytes."""
        return int(self._get(key, device_name, "size"))

    def speedup(self, key: str, device_name: str) -> float:
        """The speed-up factor ``key`` for ``device_name``."""
        return float(self._get(key, device_name, "factor"))


def load_budgets(path: Path | str) -> Budgets:
    """Read and validate a budgets file (see the module docstring for its layout)."""
    path = Path(path)
    return parse_budgets(read_budgets_text(path), path)


def parse_budgets(text: str, path: Path) -> Budgets:
    """Validate ``text`` as the budgets file ``path`` (named in every error), without writing
    it: what a tool about to change the file checks first."""
    tables = parse_toml(text, path)
    stray = sorted(name for name, value in tables.items() if not isinstance(value, dict))
    if stray:
        raise BudgetError(
            f"budgets file {path}: top-level key(s) {', '.join(stray)} outside any table; "
            f"budgets belong in [{DEFAULT_TABLE}] or in a table named after a device, "
            "e.g. [\"NVIDIA H100 80GB HBM3\"]"
        )
    if DEFAULT_TABLE not in tables:
        raise BudgetError(f"budgets file {path} has no [{DEFAULT_TABLE}] table: it defines "
                          "the known keys and their values on any device")
    defaults = {
        key: _parse_value(f"budgets file {path} [{DEFAULT_TABLE}] key {key!r}", raw)
        for key, raw in tables[DEFAULT_TABLE].items()
    }
    overheads = _parse_overheads(path, tables.get(OVERHEAD_TABLE, {}))
    devices: dict[str, dict[str, Budget]] = {}
    for device, table in tables.items():
        if device in (DEFAULT_TABLE, OVERHEAD_TABLE):
            continue
        overrides: dict[str, Budget] = {}
        for key, raw in table.items():
            where = f"budgets file {path} {_table_name(device)} key {key!r}"
            if key not in defaults:
                raise BudgetError(f"{where} is not a known budget: a device table only overrides "
                                  f"keys of [{DEFAULT_TABLE}]: {', '.join(sorted(defaults))}")
            budget = _parse_value(where, raw)
            if budget.kind != defaults[key].kind:
                raise BudgetError(f"{where} = {budget.text} is {_KIND_WORDS[budget.kind]}, but "
                                  f"[{DEFAULT_TABLE}] makes it {_KIND_WORDS[defaults[key].kind]}")
            overrides[key] = budget
        devices[device] = overrides
    return Budgets(path=path, defaults=defaults, devices=devices, overheads=overheads)
