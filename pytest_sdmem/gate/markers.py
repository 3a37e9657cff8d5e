"""What the markers say: each marker's arguments parsed into a spec, or a ``MarkerError``.

Plain functions over ``(args, kwargs)`` so they are tested without pytest, and so a bad marker
is reported at collection against its own test, with the value given and the accepted forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pytest_sdmem.base.units import (
    ACCEPTED_SIZES,
    UnitError,
    check_number,
    format_size,
    parse_size,
    shown,
)

METRICS = {
    "allocated": "peak bytes held by tensors (CUDA: max_memory_allocated)",
    "reserved": "peak bytes the caching allocator holds from the driver (what must fit the card)",
    "process": "the process's whole device memory as the driver sees it, CUDA context included "
    "(NVML; needs nvidia-ml-py)",
}

MARKERS = {
    "max_vram": "max_vram(limit, *, metric='allocated') or max_vram(budget='KEY'): fail the test "
    "when the peak device memory of its call exceeds limit (bytes, or '3GB', '2.8 GB', '512MiB')"
    " or the budgets file's KEY for this device",
    "min_speedup": "min_speedup(factor, *, baseline='none') or min_speedup(budget='KEY'): fail "
    "the test unless its sd_pipe is at least factor times faster than the baseline technique "
    "(interleaved pairs of runs; the verdict uses a confidence interval of the median ratio)",
    "gpu": "gpu: the test needs a CUDA device; skipped without --gpu (with --sdmem-estimate its "
    "memory budgets are checked on the estimate)",
    "sd_technique": "sd_technique(expr): the technique expression for the sd_pipe fixture, "
    "e.g. 'fp16+vae_slicing'",
}


class MarkerError(ValueError):
    """A marker whose arguments cannot be used; ``str()`` is the whole message."""


T = TypeVar("T")


class Marked(Protocol):
    """What ``one_value`` needs of a pytest item (kept structural: no pytest import here)."""

    def iter_markers(self, name: str) -> Any: ...


#: Looks a named budget up for this device: ``(kind, key) -> value``, kind "vram" or "speedup".
BudgetLookup = Callable[[str, str], Any]


@dataclass(frozen=True)
class MaxVram:
    limit: int
    metric: str = "allocated"
    budget_key: str | None = None

    def describe(self) -> str:
        named = f" [budget {self.budget_key}]" if self.budget_key else ""
        return f"max_vram {format_size(self.limit)} ({self.metric}){named}"


@dataclass(frozen=True)
class MinSpeedup:
    factor: float
    baseline: str = "none"
    budget_key: str | None = None


def _one_positional(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> Any:
    if len(args) == 1 and key not in kwargs:
        return args[0]
    if not args and key in kwargs:
        return kwargs[key]
    raise MarkerError(f"@pytest.mark.{name} takes exactly one {key}, got args="
                      f"({', '.join(map(shown, args))}); "
                      f"usage: {MARKERS[name]}")


def _value_or_budget(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: str,
                     kind: str, lookup: BudgetLookup | None) -> tuple[Any, str | None]:
    """The marker's value, given directly or as ``budget="KEY"`` from the budgets file."""
    if "budget" not in kwargs:
        return _one_positional(name, args, kwargs, key), None
    budget_key = kwargs["budget"]
    if args or key in kwargs:
        raise MarkerError(f"@pytest.mark.{name} takes a {key} or budget=, not both; "
                          f"usage: {MARKERS[name]}")
    if not isinstance(budget_key, str) or not budget_key:
        raise MarkerError(f"@pytest.mark.{name} budget {shown(budget_key)} is not valid; accepted: "
                          "a key of the budgets file (--sdmem-budgets)")
    if lookup is None:
        raise MarkerError(f"@pytest.mark.{name}(budget={budget_key!r}) needs a budgets file: "
                          "set --sdmem-budgets PATH (or the sdmem_budgets ini key)")
    try:
        return lookup(kind, budget_key), budget_key
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise MarkerError(f"@pytest.mark.{name}(budget={budget_key!r}): {message}") from None


def _check_keywords(name: str, kwargs: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise MarkerError(f"@pytest.mark.{name} got unexpected keyword(s) {', '.join(unknown)}; "
                          f"usage: {MARKERS[name]}")


def parse_max_vram(args: tuple[Any, ...], kwargs: dict[str, Any],
                   lookup: BudgetLookup | None = None) -> MaxVram:
    _check_keywords("max_vram", kwargs, {"limit", "metric", "budget"})
    raw, budget_key = _value_or_budget("max_vram", args, kwargs, "limit", "vram", lookup)
    try:
        limit = parse_size(raw)
    except UnitError:
        raise MarkerError(
            f"@pytest.mark.max_vram limit {shown(raw)} is not a size; accepted: {ACCEPTED_SIZES}"
        ) from None
    metric = kwargs.get("metric", "allocated")
    if metric not in METRICS:
        raise MarkerError(
            f"@pytest.mark.max_vram metric {shown(metric)} is unknown; accepted: "
            + "; ".join(f"'{k}' ({v})" for k, v in METRICS.items())
        )
    return MaxVram(limit=limit, metric=metric, budget_key=budget_key)


def parse_min_speedup(args: tuple[Any, ...], kwargs: dict[str, Any],
                      lookup: BudgetLookup | None = None) -> MinSpeedup:
    """Parse the factor; the baseline technique is validated by the technique registry."""
    _check_keywords("min_speedup", kwargs, {"factor", "baseline", "budget"})
    raw, budget_key = _value_or_budget("min_speedup", args, kwargs, "factor", "speedup", lookup)
    try:
        factor = check_number(raw, "factor", positive=True)
    except UnitError as exc:
        raise MarkerError(f"@pytest.mark.min_speedup {exc}; accepted: a positive number such "
                          "as 2.5 (the test must be 2.5x faster)") from None
    baseline = kwargs.get("baseline", "none")
    if not isinstance(baseline, str) or not baseline.strip():
        raise MarkerError(f"@pytest.mark.min_speedup baseline {shown(baseline)} is not valid; "
                          "accepted: a technique expression such as 'none' or 'fp16'")
    return MinSpeedup(factor=factor, baseline=baseline.strip(), budget_key=budget_key)


def parse_sd_technique(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    _check_keywords("sd_technique", kwargs, {"expr"})
    raw = _one_positional("sd_technique", args, kwargs, "expr")
    if not isinstance(raw, str):
        raise MarkerError(f"@pytest.mark.sd_technique expects a string such as "
                          f"'fp16+vae_slicing', got {shown(raw)}")
    return raw


def marker_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A marker as written, for messages: ``max_vram('4MB', metric='reserved')``."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def one_value(item: Marked, name: str,
              parse: Callable[[tuple[Any, ...], dict[str, Any]], T]) -> T | None:
    """The one value of the item's ``name`` markers, parsed; None when it has none.

    A test can carry a marker several times (two decorators; class, module and function
    level). pytest's ``get_closest_marker`` would take the nearest and silently drop the
    others, so a stricter budget written on the class would not apply. Here every one is
    parsed and they must agree (identical repeats are fine); different values are an error of
    that test naming both.
    """
    first: tuple[T, str] | None = None
    for mark in item.iter_markers(name):
        value = parse(mark.args, mark.kwargs)
        written = marker_call(name, mark.args, mark.kwargs)
        if first is None:
            first = (value, written)
        elif value != first[0]:
            raise MarkerError(f"@pytest.mark.{name} is given twice with different values on "
                              f"this test: {first[1]} and {written}; keep one")
    return first[0] if first is not None else None
