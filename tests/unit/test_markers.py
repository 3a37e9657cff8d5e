"""Marker arguments: what is accepted, and that every rejection names the value and the forms."""

from __future__ import annotations

import re

import pytest

from pytest_sdmem.gate.markers import (
    MARKERS,
    MarkerError,
    MaxVram,
    MinSpeedup,
    parse_max_vram,
    parse_min_speedup,
    parse_sd_technique,
)


def test_max_vram_accepts_sizes_and_metrics() -> None:
    assert parse_max_vram(("3GB",), {}) == MaxVram(3 * 10**9, "allocated")
    assert parse_max_vram((), {"limit": 1024, "metric": "reserved"}) == MaxVram(1024, "reserved")
    assert parse_max_vram(("1GiB",), {"metric": "process"}).metric == "process"


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("3 bananas",), {}, "'3 bananas' is not a size"),
        (("3GBxyz",), {}, "'3GBxyz'"),
        ((), {}, "exactly one limit"),
        (("1GB", "2GB"), {}, "exactly one limit"),
        (("1GB",), {"metric": "peak"}, "metric 'peak' is unknown"),
        (("1GB",), {"metrc": "allocated"}, "unexpected keyword(s) metrc"),
    ],
)
def test_max_vram_errors(args: tuple, kwargs: dict, fragment: str) -> None:
    with pytest.raises(MarkerError) as err:
        parse_max_vram(args, kwargs)
    assert fragment in str(err.value)


def test_min_speedup() -> None:
    assert parse_min_speedup((2.5,), {}) == MinSpeedup(2.5, "none")
    assert parse_min_speedup((2,), {"baseline": " fp16 "}) == MinSpeedup(2.0, "fp16")
    for bad in (0, -1, "2x", float("nan"), float("inf"), True):
        with pytest.raises(MarkerError, match="positive number"):
            parse_min_speedup((bad,), {})
    with pytest.raises(MarkerError, match="baseline"):
        parse_min_speedup((2,), {"baseline": ""})


def test_sd_technique() -> None:
    assert parse_sd_technique(("fp16",), {}) == "fp16"
    with pytest.raises(MarkerError, match="expects a string"):
        parse_sd_technique((3,), {})


def test_named_budgets_come_from_the_lookup() -> None:
    table = {("vram", "offload"): 2_800_000_000, ("speedup", "fp16"): 2.2}

    def lookup(kind: str, key: str) -> object:
        if (kind, key) not in table:
            raise KeyError(f"no budget {key!r}; known: offload, fp16")
        return table[kind, key]

    spec = parse_max_vram((), {"budget": "offload", "metric": "reserved"}, lookup)
    assert spec == MaxVram(2_800_000_000, "reserved", "offload")
    assert "[budget offload]" in spec.describe()
    assert parse_min_speedup((), {"budget": "fp16"}, lookup) == MinSpeedup(2.2, "none", "fp16")
    with pytest.raises(MarkerError, match="no budget 'nope'; known: offload, fp16"):
        parse_max_vram((), {"budget": "nope"}, lookup)
    with pytest.raises(MarkerError, match="not both"):
        parse_max_vram(("1GB",), {"budget": "offload"}, lookup)
    with pytest.raises(MarkerError, match="needs a budgets file"):
        parse_min_speedup((), {"budget": "fp16"}, None)


def test_marker_help_agrees_with_what_the_plugin_does() -> None:
    """``pytest --markers`` text: no confidence figure that failures would contradict (the
    sequential looks report a wider interval than 95%), and the gpu marker names the way to
    check its budgets without a GPU."""
    assert not re.search(r"\d+(\.\d+)?%", MARKERS["min_speedup"])
    assert "confidence interval" in MARKERS["min_speedup"]
    assert "--sdmem-estimate" in MARKERS["gpu"]
