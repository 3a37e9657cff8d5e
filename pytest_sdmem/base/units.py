"""Sizes and durations: parse what people write in markers and options, format what we report.

Decimal units (KB, MB, GB, TB) are powers of 1000 because that is how diffusers writes its own
thresholds (``2.8e9`` bytes is "2.8 GB"); binary units (KiB ... TiB) are powers of 1024.
"""

from __future__ import annotations

import math
import re

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

ACCEPTED_SIZES = (
    "a positive whole number of bytes (4096, 2.8e9), or a positive number and a unit, "
    "e.g. '3GB', '2.8 GB', '512 MiB' (units, case-insensitive: B, KB, MB, GB, TB = powers "
    "of 1000; KiB, MiB, GiB, TiB = powers of 1024)"
)

# ASCII digits only: \d also matches full-width and other scripts' digits, which float() reads.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$", re.IGNORECASE | re.ASCII)


class UnitError(ValueError):
    """A size or duration that does not parse; the message names the value and what is accepted."""


def shown(value: object) -> str:
    """``repr(value)`` for a message, except an integer past float range, whose thousands of
    digits would bury the message: that is described by its magnitude."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        return f"an integer of about 1e{int(math.log10(abs(value)))}"
    return repr(value)


def check_number(value: object, what: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (positive when ``positive``), or a UnitError naming ``what``.

    Every number a user gives (a marker argument, an option, a budgets or results file entry)
    passes here where it enters, because everything after computes in floats: an integer past
    float range (``10**400``) raises OverflowError deep inside a report, and NaN or infinity
    make every comparison with it silently false.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnitError(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        if isinstance(value, int):
            raise UnitError(f"{what} is {shown(value)}, beyond the range of a float")
        raise UnitError(f"{what} {value!r} is not a finite number")
    if positive and number <= 0:
        raise UnitError(f"{what} {value!r} is not positive")
    return number


def parse_size(value: float | str) -> int:
    """Return the number of bytes ``value`` denotes; reject anything not exactly a size.

    The whole string must match: "3GBxyz" is an error rather than 3 GB, because a typo in a
    budget must not silently become a different budget.
    """
    if isinstance(value, bool):
        raise UnitError(f"invalid size {value!r}: expected {ACCEPTED_SIZES}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.8e9, as diffusers writes thresholds, is a whole number of bytes
    if isinstance(value, int):
        try:
            check_number(value, "size", positive=True)
        except UnitError as exc:
            raise UnitError(f"invalid size: {exc}; expected {ACCEPTED_SIZES}") from None
        return value
    if not isinstance(value, str):
        raise UnitError(
            f"invalid size {value!r} of type {type(value).__name__}: expected {ACCEPTED_SIZES}"
        )
    match = _SIZE_RE.match(value)
    if match is None or match.group(2).lower() not in UNITS:
        raise UnitError(f"invalid size {value!r}: expected {ACCEPTED_SIZES}")
    number, unit = match.groups()
    size = float(number) * UNITS[unit.lower()]
    if not math.isfinite(size) or size < 1:
        raise UnitError(
            f"invalid size {value!r}: must be at least 1 byte; expected {ACCEPTED_SIZES}"
        )
    return round(size)


def format_size(n: float) -> str:
    """Format bytes in decimal units, two decimals ("3.41 GB"), as budgets are written."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, factor in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= factor:
            return f"{sign}{n / factor:.2f} {unit}"
    return f"{sign}{int(n)} B"


def format_duration(seconds: float) -> str:
    """Format a duration for tables and failure lines ("4.11 s", "812.3 ms", "95.0 µs")."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"
