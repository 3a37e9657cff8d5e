"""On-disk cache of synthetic pipelines, safe against interruption and concurrent builders.

A synthetic pipeline is saved once with ``save_pretrained`` (safetensors) and every test loads
it with ``from_pretrained``, so the real loading path is exercised and nothing stays alive in
memory between tests. An entry is written into a temporary directory inside the cache
directory, gets a marker file listing its files and sizes last, and is then renamed into place
(atomic on one file system): a reader sees either no entry or a complete one. An entry without
a valid marker (a killed copy, a truncated file) is never used: it is moved aside and rebuilt.

Builders of the same entry (pytest-xdist workers) serialise on an ``flock`` so that the
expensive ``sd15`` build happens once; where no lock is available the atomic rename still
decides: the first rename wins and the loser discards its copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diffusers

from pytest_sdmem.pipelines.build import build_pipeline
from pytest_sdmem.pipelines.configs import get_spec
from pytest_sdmem.pipelines.errors import ModelError
from pytest_sdmem.pipelines.quiet import quiet_progress_bars
from pytest_sdmem.pipelines.tokenizer import VOCAB_WORDS

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone keeps entries consistent.
    fcntl = None  # type: ignore[assignment]

#: Bumped whenever the way entries are built or laid out changes, so old entries are not reused.
FORMAT_VERSION = 1
#: Written last into an entry; an entry without a valid one is incomplete.
MARKER_NAME = "sdmem-entry.json"
_TEMP_PREFIX = ".tmp-"
_STALE_PREFIX = ".stale-"


def cache_key(model: str, *, seed: int = 0, safety_checker: bool = False) -> str:
    """Hash of everything that determines an entry's content: architecture, seed, format."""
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": get_spec(model).as_dict(),
        "vocab_words": list(VOCAB_WORDS),
        "seed": seed,
        "safety_checker": safety_checker,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_name(model: str, *, seed: int = 0, safety_checker: bool = False) -> str:
    """Directory name of an entry: readable prefix, then the key."""
    key = cache_key(model, seed=seed, safety_checker=safety_checker)
    checker = "-safety" if safety_checker else ""
    return f"{model}-seed{seed}{checker}-{key[:16]}"


def _file_sizes(directory: Path) -> dict[str, int]:
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER_NAME
    }


def is_complete(entry: Path, key: str) -> bool:
    """Whether ``entry`` has a marker for ``key`` and every file it lists, at its size."""
    try:
        marker = json.loads((entry / MARKER_NAME).read_text())
        return marker["key"] == key and all(
            (entry / name).stat().st_size == size for name, size in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_marker(directory: Path, key: str, model: str, seed: int, safety_checker: bool) -> None:
    marker: dict[str, Any] = {
        "key": key,
        "format_version": FORMAT_VERSION,
        "model": model,
        "seed": seed,
        "safety_checker": safety_checker,
        "diffusers_version": diffusers.__version__,
        "files": _file_sizes(directory),
    }
    (directory / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True))


@contextmanager
def _build_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock for one entry; yields whether the lock is real.

    The operating system releases an ``flock`` when its holder dies, so a killed builder never
    blocks the others. Where locking is unsupported (no fcntl, some network file systems) the
    build goes ahead unlocked: the atomic rename still keeps the entry consistent.
    """
    if fcntl is None:
        yield False
        return
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(path: Path) -> None:
    """Remove a directory of ours: first renamed aside, so no reader ever sees it half-deleted."""
    aside = path.with_name(f"{_STALE_PREFIX}{path.name}-{uuid.uuid4().hex}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return  # another builder already removed it
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(cache_dir: Path, name: str) -> None:
    """Delete temporary and set-aside directories that killed builders left for this entry.

    Only called while holding the entry's lock: then no live process is writing them.
    """
    for prefix in (_TEMP_PREFIX, _STALE_PREFIX):
        for leftover in cache_dir.glob(f"{prefix}{name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(temp: Path, entry: Path, key: str) -> None:
    """Rename a complete temporary directory into place, unless another builder won.

    When the rename loses (the entry appeared meanwhile, complete), ``temp`` is left for the
    caller to discard.
    """
    if entry.exists() and not is_complete(entry, key):
        _discard(entry)
    try:
        temp.rename(entry)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not is_complete(entry, key):
            raise


def ensure_cached(
    model: str, cache_dir: Path, *, seed: int = 0, safety_checker: bool = False
) -> Path:
    """The directory of a complete cache entry for a synthetic model, built if needed.

    Inside ``cache_dir`` only the entry's own names are ever written or removed (the entry,
    ``.<entry>.lock``, ``.tmp-<entry>-*``, ``.stale-<entry>-*``), and an existing entry is
    replaced only when it has no valid marker: nothing else in the directory is touched.
    """
    key = cache_key(model, seed=seed, safety_checker=safety_checker)
    name = entry_name(model, seed=seed, safety_checker=safety_checker)
    cache_dir = Path(cache_dir)
    entry = cache_dir / name
    if is_complete(entry, key):
        return entry
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(cache_dir / f".{name}.lock") as locked:
            if is_complete(entry, key):
                return entry  # built by another worker while this one waited
            if locked:
                _remove_leftovers(cache_dir, name)
            # Not tempfile.mkdtemp: its 0o700 mode would survive the rename and hide the entry
            # from other users of a shared cache directory; mkdir honours the umask.
            temp = cache_dir / f"{_TEMP_PREFIX}{name}-{uuid.uuid4().hex}"
            temp.mkdir()
            try:
                with quiet_progress_bars():
                    build_pipeline(model, seed=seed, safety_checker=safety_checker).save_pretrained(
                        temp, safe_serialization=True
                    )
                _write_marker(temp, key, model, seed, safety_checker)
                _publish(temp, entry, key)
            finally:
                shutil.rmtree(temp, ignore_errors=True)  # gone when published; else discarded
    except OSError as exc:
        raise ModelError(
            f"could not write the cache entry of synthetic model {model!r} in {cache_dir}: {exc}"
        ) from exc
    return entry
