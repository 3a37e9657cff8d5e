"""Budgets files: defaults, per-GPU overrides, and every mistake reported with file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_sdmem.gate.budgets import BudgetError, Budgets, load_budgets

H100 = "NVIDIA H100 80GB HBM3"

GOOD = f"""
[default]
sequential_offload = "3 GB"
vae_tiling_4k = "8GiB"
seed_fp16 = 1.32
parity = 1

["{H100}"]
seed_fp16 = 2.5
vae_tiling_4k = "7.5 GB"
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "budgets.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def budgets(tmp_path: Path) -> Budgets:
    return load_budgets(_write(tmp_path, GOOD))


def test_defaults_apply_to_a_device_without_a_table(budgets: Budgets) -> None:
    assert budgets.vram("sequential_offload", "Tesla T4") == 3_000_000_000
    assert budgets.vram("vae_tiling_4k", "cpu") == 8 * 2**30
    assert budgets.speedup("seed_fp16", "Tesla T4") == 1.32
    assert budgets.speedup("parity", "Tesla T4") == 1.0


def test_a_device_table_overrides_only_its_keys(budgets: Budgets) -> None:
    assert budgets.speedup("seed_fp16", H100) == 2.5
    assert budgets.vram("vae_tiling_4k", H100) == 7_500_000_000
    assert budgets.vram("sequential_offload", H100) == 3_000_000_000
    assert budgets.lookup("seed_fp16", H100)[1] == f"[{H100!r}]"
    assert budgets.lookup("sequential_offload", H100)[1] == "[default]"


def test_device_names_match_exactly(budgets: Budgets) -> None:
    # A near miss gets the defaults: get_device_name() is the one spelling of a GPU model.
    assert budgets.speedup("seed_fp16", H100.lower()) == 1.32


def test_an_unknown_key_lists_the_known_ones(budgets: Budgets) -> None:
    with pytest.raises(BudgetError) as err:
        budgets.vram("sequential_ofload", H100)
    message = str(err.value)
    assert "unknown budget key 'sequential_ofload'" in message
    assert str(budgets.path) in message
    assert "parity, seed_fp16, sequential_offload, vae_tiling_4k" in message


def test_a_size_is_not_a_factor_and_back(budgets: Budgets) -> None:
    with pytest.raises(BudgetError, match=r"'seed_fp16' .* is a speed-up factor .* got 2\.5; "
                                          r"this marker needs a memory budget"):
        budgets.vram("seed_fp16", H100)
    with pytest.raises(BudgetError, match=r"'sequential_offload' .*\[default\] is a memory "
                                          r"budget .* got '3 GB'; this marker needs a speed-up"):
        budgets.speedup("sequential_offload", H100)


def test_the_budget_error_is_a_value_error() -> None:
    assert issubclass(BudgetError, ValueError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[default]\nx = "3 bananas"', r"\[default\] key 'x' = '3 bananas' is not a size; "
                                       r"accepted: .*GiB"),
        ('[default]\nx = "3GBxyz"', r"'3GBxyz' is not a size"),
        ('[default]\nx = "-1GB"', r"'-1GB' is not a size"),
        ("[default]\nx = 0", r"key 'x': speed-up factor 0 is not positive"),
        ("[default]\nx = -1.5", r"factor -1.5 is not positive"),
        ("[default]\nx = inf", r"factor inf is not a finite number"),
        ("[default]\nx = nan", r"factor nan is not a finite number"),
        ("[default]\nx = 1" + "0" * 400, r"factor is an integer of about 1e400, beyond the range"),
        ("[default]\nx = true", r"x' = True is neither a memory budget .* nor a speed-up factor"),
        ("[default]\nx = [1, 2]", r"x' = \[1, 2\] is neither"),
        ("[default]\nx = 2024-01-01", r"is neither"),
        ("[default.sub]\nx = 1", r"\[default\] key 'sub' = \{'x': 1\} is neither"),
    ],
)
def test_bad_values_name_the_file_table_key_and_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(BudgetError, match=message) as err:
        load_budgets(path)
    assert str(err.value).startswith(f"budgets file {path} ")


def test_a_device_table_may_not_invent_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[default]\nseed_fp16 = 1.3\n\n["{H100}"]\nseed_fp61 = 2\n')
    with pytest.raises(BudgetError) as err:
        load_budgets(path)
    message = str(err.value)
    assert f"{path} [{H100!r}] key 'seed_fp61' is not a known budget" in message
    assert message.endswith("keys of [default]: seed_fp16")


def test_a_device_table_keeps_the_kind_of_each_key(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[default]\nseed_fp16 = 1.3\n\n["{H100}"]\nseed_fp16 = "3 GB"\n')
    with pytest.raises(BudgetError, match=r"key 'seed_fp16' = '3 GB' is a memory budget .*, but "
                                          r"\[default\] makes it a speed-up factor"):
        load_budgets(path)


def test_a_device_value_is_validated_too(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[default]\nx = "3 GB"\n\n["{H100}"]\nx = "three GB"\n')
    with pytest.raises(BudgetError, match=rf"\[{H100!r}\] key 'x' = 'three GB' is not a size"):
        load_budgets(path)


def test_a_file_without_defaults_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, f'["{H100}"]\nx = 1.5\n')
    with pytest.raises(BudgetError, match=rf"{path} has no \[default\] table"):
        load_budgets(path)


def test_keys_outside_any_table_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 'seed_fp16 = 1.3\n[default]\nx = 1.5\n')
    with pytest.raises(BudgetError, match=r"top-level key\(s\) seed_fp16 outside any table"):
        load_budgets(path)


def test_corrupt_toml_names_the_file_and_the_parser_message(tmp_path: Path) -> None:
    path = _write(tmp_path, '[default]\nx = "3 GB\n')
    with pytest.raises(BudgetError, match=rf"budgets file {path} is not valid TOML: .*line 2"):
        load_budgets(path)


def test_binary_garbage_is_not_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path, b"[default]\nx = \"\xff\xfe\"\n")
    with pytest.raises(BudgetError, match=rf"budgets file {path} is not UTF-8 text"):
        load_budgets(path)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_an_unreadable_file_says_so(tmp_path: Path, make: str) -> None:
    path = tmp_path / "budgets.toml"
    if make == "directory":
        path.mkdir()
    problem = "a directory, not a regular file" if make == "directory" else "cannot read it: "
    with pytest.raises(BudgetError, match=rf"budgets file {path}: {problem}"):
        load_budgets(path)


def test_an_empty_default_table_has_no_keys(tmp_path: Path) -> None:
    budgets = load_budgets(_write(tmp_path, "[default]\n"))
    assert budgets.keys == ()
    with pytest.raises(BudgetError, match=r"known keys: \(none\)"):
        budgets.speedup("seed_fp16", H100)


def test_the_suites_budgets_file_holds_the_guides_numbers() -> None:
    """The shipped defaults: the guide's and diffusers' bounds as written, the speed-up
    thresholds at half the guide's ratios, model offload's latency bound as derived."""
    budgets = load_budgets(Path(__file__).parents[1] / "techniques" / "budgets.toml")
    assert budgets.vram("sequential_offload", "any") == 3 * 10**9
    assert budgets.vram("sequential_offload_attention_slicing", "any") == 2_800_000_000
    assert budgets.vram("model_offload", "any") == 3_500_000_000
    assert budgets.vram("vae_tiling_4k", "any") == 8 * 10**9
    for key, guide in {"seed_fp16": 2.63, "seed_channels_last": 2.88,
                       "seed_traced_unet": 2.96, "seed_memory_efficient_attention": 3.61}.items():
        assert budgets.speedup(key, "any") == pytest.approx(guide * 0.5)
    assert budgets.speedup("compile_unet", "any") == budgets.speedup("seed_traced_unet", "any")
    # Model offload: derived in the file from the copies per generation (text encoder, UNet,
    # VAE and safety checker in fp16, each way) over ~8 GB/s against a 1.2 s generation.
    copies = 2 * 2 * (123.06e6 + 859.52e6 + 83.65e6 + 304.31e6)  # bytes per generation
    derived = 1.2 / (1.2 + copies / 8e9)
    assert derived - 0.01 <= budgets.speedup("model_offload_vs_gpu", "any") <= derived


OVERHEAD = f"""
[default]
sequential_offload = "3 GB"

[overhead."{H100}"]
reserved = "416 MiB"
process = "1 GiB"
calibrated = "sdmem calibrate, 12 tests"

[overhead."NVIDIA L4"]
reserved = 0
calibrated = "sdmem calibrate, 3 tests"
"""


def test_overhead_tables_per_gpu(tmp_path: Path) -> None:
    budgets = load_budgets(_write(tmp_path, OVERHEAD))
    h100 = budgets.overhead(H100)
    assert h100 is not None
    assert (h100.reserved, h100.process) == (416 * 2**20, 2**30)
    assert h100.calibrated == "sdmem calibrate, 12 tests"
    assert [h100.for_metric(m) for m in ("allocated", "reserved", "process")] == [
        0, 416 * 2**20, 2**30]
    l4 = budgets.overhead("NVIDIA L4")
    assert l4 is not None and (l4.reserved, l4.process) == (0, None)
    assert budgets.overhead("Tesla T4") is None
    # An overhead-only GPU is a GPU the file names; its budgets are the defaults.
    assert budgets.device_names == (H100, "NVIDIA L4")
    assert budgets.vram("sequential_offload", "NVIDIA L4") == 3_000_000_000


@pytest.mark.parametrize(("table", "message"), [
    ('reserved = "1 GB"', r"has no 'calibrated' string"),
    ('reserved = "1 GB"\ncalibrated = ""', r"has no 'calibrated' string"),
    ('calibrated = "x"', r"gives neither 'reserved' nor 'process'"),
    ('reserved = "1 banana"\ncalibrated = "x"', r"key 'reserved' = '1 banana' is not a size"),
    ('reserved = -5\ncalibrated = "x"', r"key 'reserved' = -5 is not a size"),
    ('allocated = "1 GB"\ncalibrated = "x"', r"key\(s\) 'allocated' unknown; accepted: "
                                               r"reserved, process"),
])
def test_overhead_mistakes_name_the_table_and_key(tmp_path: Path, table: str,
                                                  message: str) -> None:
    text = f'[default]\nx = "1 GB"\n\n[overhead."{H100}"]\n{table}\n'
    path = _write(tmp_path, text)
    with pytest.raises(BudgetError, match=message) as err:
        load_budgets(path)
    assert f"[overhead.{H100!r}]" in str(err.value) and str(path) in str(err.value)


def test_overhead_needs_a_table_per_gpu(tmp_path: Path) -> None:
    path = _write(tmp_path, '[default]\nx = "1 GB"\n\n[overhead]\nreserved = "1 GB"\n')
    with pytest.raises(BudgetError, match=r"\[overhead\] holds one table per GPU model"):
        load_budgets(path)
