"""How far a figure may move from its baseline before it counts as a change.

Measured figures are noisy (allocator rounding, clock jitter), so a baseline comparison that
flagged every byte would cry wolf on every run. Each metric gets a tolerance, relative ("5%")
or absolute ("200MB", "0.5s", "0.1x"); a change within it is "unchanged". A metric can also be
"off": its figures are compared and shown, never judged.

Parsing is strict for the same reason budgets are: a typo such as ``vrma=5%`` must not silently
fall back to the default and gate the run on a tolerance nobody asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from pytest_sdmem.base.units import (
    UnitError,
    check_number,
    format_duration,
    format_size,
    parse_size,
)

# vram covers peak allocated and peak reserved memory; latency the median latency and the
# medians of its breakdown over the measured rounds (per step, text encoding, VAE decode);
# startup the breakdown's single readings (pipeline load, first call); speedup the measured
# speed-up ratio (where lower is worse). ``deltas.FIGURES`` maps figures to these.
METRICS = ("vram", "latency", "startup", "speedup")

OFF = "off"

DEFAULT_TOLERANCE_SPEC = "vram=5%,latency=10%,startup=off,speedup=5%"
"""The defaults, in the syntax users write: memory is nearly deterministic on one card and
driver, so 5% is already generous; a median latency jitters more between runs, hence 10%.
Startup figures are one reading each (a pipeline loads once, its first call is cold once), and
what moves them between runs is the machine's state, not the code: the page cache holding the
weights or not, inductor's and cuDNN's caches warm or cold. No tolerance on one reading has a
known false-alarm rate, so they are shown and not judged unless a tolerance is given."""

ACCEPTED_TOLERANCES = (
    "comma-separated METRIC=VALUE with METRIC one of vram, latency, startup, speedup and VALUE "
    "either a percentage of the baseline ('5%'), an absolute change: a size for vram ('200MB', "
    "'1GiB'), a duration for latency and startup ('0.5s', '250ms', '800us'), a ratio for "
    "speedup ('0.1x'); or 'off' (compared and shown, never judged); "
    "e.g. 'vram=200MB,latency=15%,startup=100%'"
)

_PERCENT_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*%$", re.ASCII)
_DURATION_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(s|ms|us|µs)$", re.IGNORECASE | re.ASCII)
_RATIO_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*x$", re.IGNORECASE | re.ASCII)
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


class ToleranceError(UnitError):
    """A tolerance spec that does not parse; the message names it and lists the accepted forms."""


def _parse_duration(text: str) -> float:
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def _parse_ratio(text: str) -> float:
    match = _RATIO_RE.match(text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1))


def _format_ratio(value: float) -> str:
    return f"{value:.2f}x"


# Per metric: how to parse an absolute tolerance, and how to print a figure or a change.
_ABSOLUTE: dict[str, tuple[Callable[[str], float], str]] = {
    "vram": (lambda text: float(parse_size(text)), "a size such as '200MB'"),
    "latency": (_parse_duration, "a duration such as '0.5s' or '250ms'"),
    "startup": (_parse_duration, "a duration such as '0.5s' or '250ms'"),
    "speedup": (_parse_ratio, "a ratio such as '0.1x'"),
}
FORMATTERS: dict[str, Callable[[float], str]] = {
    "vram": format_size,
    "latency": format_duration,
    "startup": format_duration,
    "speedup": _format_ratio,
}


# Unit suffix printed by the formatters -> (factor, decimals), so a change is written in the unit
# of the figures beside it: "3.41 GB vs 3.00 GB (+0.41 GB)", not "(+410.00 MB)".
_UNIT_SCALE: dict[str, tuple[float, int]] = {
    "TB": (1e12, 2), "GB": (1e9, 2), "MB": (1e6, 2), "KB": (1e3, 2), "B": (1.0, 0),
    "s": (1.0, 2), "ms": (1e-3, 1), "µs": (1e-6, 1), "x": (1.0, 2),
}


def format_change(metric: str, change: float, reference: float) -> str:
    """A signed change in the unit that ``reference`` (the larger figure) is printed in."""
    unit = FORMATTERS[metric](abs(reference)).split(" ")[-1].lstrip("0123456789.")
    factor, decimals = _UNIT_SCALE[unit]
    sign = "-" if change < 0 else "+"
    number = f"{abs(change) / factor:.{decimals}f}"
    return f"{sign}{number}x" if unit == "x" else f"{sign}{number} {unit}"


@dataclass(frozen=True)
class Tolerance:
    """One metric's allowance: ``relative`` (a fraction of the baseline) or ``absolute`` (units);
    neither, with ``judged`` False, for a metric that is off."""

    metric: str
    relative: float | None = None
    absolute: float | None = None
    judged: bool = True

    def limit(self, base: float) -> float:
        """The largest change from ``base`` that still counts as unchanged."""
        if self.absolute is not None:
            return self.absolute
        return (self.relative or 0.0) * abs(base)

    def __str__(self) -> str:
        if not self.judged:
            return OFF
        if self.absolute is not None:
            return FORMATTERS[self.metric](self.absolute)
        return f"{(self.relative or 0.0) * 100:g}%"


@dataclass(frozen=True)
class Tolerances:
    """The tolerance of every metric; build with :func:`parse_tolerances`."""

    vram: Tolerance
    latency: Tolerance
    startup: Tolerance
    speedup: Tolerance

    def __getitem__(self, metric: str) -> Tolerance:
        return getattr(self, metric)

    def __str__(self) -> str:
        return ",".join(f"{m}={self[m]}" for m in METRICS)


def _parse_one(metric: str, value: str, item: str) -> Tolerance:
    if value.lower() == OFF:
        return Tolerance(metric, judged=False)
    percent = _PERCENT_RE.match(value)
    parse, example = _ABSOLUTE[metric]
    try:
        number = float(percent.group(1)) if percent is not None else parse(value)
    except ValueError:
        raise ToleranceError(
            f"invalid tolerance {item!r}: {metric} takes a percentage such as '5%', {example}, "
            f"or '{OFF}'"
        ) from None
    try:
        check_number(number, "value")
    except UnitError:  # a run of digits past float range, e.g. "1000...0%"
        raise ToleranceError(f"invalid tolerance {item!r}: not a finite value") from None
    if percent is not None:
        return Tolerance(metric, relative=number / 100)
    return Tolerance(metric, absolute=number)


def _parse_spec(spec: str) -> dict[str, Tolerance]:
    if not spec.strip():
        raise ToleranceError(f"empty tolerance spec: expected {ACCEPTED_TOLERANCES}")
    parsed: dict[str, Tolerance] = {}
    for item in spec.split(","):
        metric, sep, value = (part.strip() for part in item.partition("="))
        metric = metric.lower()
        if not sep or metric not in METRICS or not value:
            raise ToleranceError(
                f"invalid tolerance {item.strip()!r} in {spec!r}: expected {ACCEPTED_TOLERANCES}"
            )
        if metric in parsed:
            raise ToleranceError(f"tolerance for {metric!r} given twice in {spec!r}")
        parsed[metric] = _parse_one(metric, value, item.strip())
    return parsed


DEFAULT_TOLERANCES = Tolerances(**_parse_spec(DEFAULT_TOLERANCE_SPEC))


def parse_tolerances(spec: str | None, base: Tolerances = DEFAULT_TOLERANCES) -> Tolerances:
    """Parse ``spec`` over ``base`` (the defaults): metrics it does not name keep their value.

    ``None`` means "no option given" and returns ``base``; an empty string is an error, because
    an option given with nothing in it is more likely a broken CI variable than a wish.
    """
    if spec is None:
        return base
    return replace(base, **_parse_spec(spec))
