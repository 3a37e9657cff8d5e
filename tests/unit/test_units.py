"""Sizes as budgets are written: decimal units as diffusers writes them, binary units exact."""

from __future__ import annotations

import pytest

from pytest_sdmem.base.units import (
    UnitError,
    check_number,
    format_duration,
    format_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3GB", 3 * 10**9),
        ("2.8 GB", 2_800_000_000),
        ("2.8e9", None),
        ("3gib", 3 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("  1 kb ", 1000),
        ("1KiB", 1024),
        ("7 b", 7),
        ("1.5TB", 1_500_000_000_000),
        ("0.5 TiB", 2**39),
        (".5GB", 500_000_000),
        (4096, 4096),
        (2.8e9, 2_800_000_000),
    ],
)
def test_parse_size(text: str | int, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(UnitError):
            parse_size(text)
    else:
        assert parse_size(text) == expected


def test_gb_and_gib_differ_by_the_binary_factor() -> None:
    assert parse_size("1GiB") - parse_size("1GB") == 2**30 - 10**9 == 73_741_824


@pytest.mark.parametrize("bad", ["3GBxyz", "3 bananas", "-1GB", "0", "", "GB", "3 G B", "0GB",
                                 "1e3MB", "nan GB", 0, -5, True, 3.5, None,
                                 "\uff13GB", "\u0663 GB"])  # full-width 3, Arabic-Indic 3
def test_malformed_sizes_are_rejected_with_the_accepted_forms(bad: object) -> None:
    with pytest.raises(UnitError) as err:
        parse_size(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)
    assert "GiB" in str(err.value) and "powers of 1000" in str(err.value)


def test_format_size_uses_decimal_units() -> None:
    assert format_size(3_410_000_000) == "3.41 GB"
    assert format_size(512) == "512 B"
    assert format_size(64 * 2**20) == "67.11 MB"
    assert format_size(-410_000_000) == "-410.00 MB"


def test_format_duration() -> None:
    assert format_duration(4.111) == "4.11 s"
    assert format_duration(0.8123) == "812.3 ms"
    assert format_duration(95e-6) == "95.0 µs"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (10**400, "x is an integer of about 1e400, beyond the range of a float"),
        (-(10**5000), "x is an integer of about 1e5000"),  # past str()'s digit limit too
        (float("nan"), "x nan is not a finite number"),
        (float("inf"), "x inf is not a finite number"),
        (0, "x 0 is not positive"),
        (-0.5, "x -0.5 is not positive"),
        (True, "x True is not a number"),
        ("3", "x '3' is not a number"),
        (None, "x None is not a number"),
    ],
    ids=["1e400", "-1e5000", "nan", "inf", "zero", "negative", "bool", "text", "none"],
)
def test_check_number_refuses_what_floats_cannot_hold(value: object, problem: str) -> None:
    with pytest.raises(UnitError) as err:
        check_number(value, "x", positive=True)
    assert str(err.value).startswith(problem)


def test_check_number_accepts_finite_numbers() -> None:
    assert check_number(10**300, "x") == 1e300
    assert check_number(-2, "x") == -2.0
    assert check_number(2.5, "x", positive=True) == 2.5


def test_a_size_past_float_range_is_refused_without_printing_its_digits() -> None:
    with pytest.raises(UnitError) as err:
        parse_size(10**400)
    assert "about 1e400" in str(err.value) and "0" * 50 not in str(err.value)

