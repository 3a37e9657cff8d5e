"""Atomic writes: the old file or the new one whole, with a mode like any new file's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_sdmem.base import atomic
from pytest_sdmem.base.atomic import write_atomic


def test_text_and_bytes_land_whole_with_the_umask_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        text = write_atomic(tmp_path / "sub" / "a.json", "{}\n")
        data = write_atomic(tmp_path / "b.pickle", b"\x80\x04")
    finally:
        os.umask(umask)
    assert text.read_text() == "{}\n" and data.read_bytes() == b"\x80\x04"
    assert text.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert write_atomic(tmp_path / "c.toml", "x", mode=0o640).stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_atomic(tmp_path / "results.json", "old")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
