"""The synthetic-model cache finds any change to an entry after it was built.

Sizes alone miss a same-size edit (a config's ``beta_end`` 0.012 -> 0.019, one weight byte),
which would load silently as another model; the marker's SHA-256 of every file catches it, and
the stat stamp kept per verified file keeps that cheap: an unchanged file is not read again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pytest_sdmem.building.pipelines import cache
from pytest_sdmem.building.pipelines.cache import (
    CacheWarning,
    cache_key,
    ensure_cached,
    entry_problem,
)

KEY = cache_key("tiny")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_cached("tiny", tmp_path_factory.mktemp("sdmem-cache"))


@pytest.fixture
def entry(built: Path, tmp_path: Path) -> Path:
    """A verified copy of the tiny entry, in a cache directory of its own."""
    copy = Path(shutil.copytree(built, tmp_path / built.name))
    assert entry_problem(copy, KEY) is None
    return copy


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the cache reads to hash them, in order."""
    calls: list[str] = []
    real = cache._sha256

    def spy(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(cache, "_sha256", spy)
    return calls


def _rewrite_keeping_times(path: Path, data: bytes) -> None:
    """Write ``data`` (same length) in place and set the times back, as a careful tool would:
    size, inode and mtime stay what they were."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        st.st_size, st.st_ino, st.st_mtime_ns)


def test_a_same_size_config_edit_is_found_and_the_entry_rebuilt(entry: Path) -> None:
    config = entry / SCHEDULER_CONFIG
    text = config.read_bytes()
    assert text.count(b'"beta_end": 0.012') == 1
    _rewrite_keeping_times(config, text.replace(b'"beta_end": 0.012', b'"beta_end": 0.019'))
    assert entry_problem(entry, KEY) == f"{SCHEDULER_CONFIG} changed since it was built " \
                                        "(its SHA-256 differs)"
    with pytest.warns(CacheWarning, match=f"{entry}: {SCHEDULER_CONFIG} changed"):
        assert ensure_cached("tiny", entry.parent) == entry
    assert b'"beta_end": 0.012' in config.read_bytes()
    assert entry_problem(entry, KEY) is None


def test_one_weight_byte_changed_is_found(entry: Path) -> None:
    weights = entry / UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    _rewrite_keeping_times(weights, bytes(data))
    assert entry_problem(entry, KEY) == f"{UNET_WEIGHTS} changed since it was built " \
                                        "(its SHA-256 differs)"


def test_an_added_file_is_found(entry: Path) -> None:
    (entry / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    assert entry_problem(entry, KEY) == ("files added or removed since it was built: "
                                         "unet/diffusion_pytorch_model.bin")


def test_a_verified_file_is_hashed_again_only_when_its_stamp_changes(
    entry: Path, hashed: list[str]
) -> None:
    assert entry_problem(entry, KEY) is None
    assert hashed == [], "an unchanged, verified entry is checked by stat alone"
    os.utime(entry / UNET_WEIGHTS)  # touched, content unchanged: hashed once, then trusted
    assert entry_problem(entry, KEY) is None
    assert entry_problem(entry, KEY) is None
    assert hashed == ["diffusion_pytorch_model.safetensors"]
