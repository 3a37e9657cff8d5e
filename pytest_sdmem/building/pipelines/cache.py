"""On-disk cache of synthetic pipelines, safe against interruption and concurrent builders.

A synthetic pipeline is saved once with ``save_pretrained`` (safetensors) and every test loads
it with ``from_pretrained``, so the real loading path is exercised and nothing stays alive in
memory between tests. An entry is written into a temporary directory inside the cache
directory, gets a marker file listing its files and sizes last, and is then renamed into place
(atomic on one file system): a reader sees either no entry or a complete one. An entry without
a valid marker (a killed copy, a truncated file) is never used: it is moved aside and rebuilt.

The marker holds each file's size and SHA-256, so any change to an entry after it was built (a
same-size edit of a config or of one weight byte included) is found, and the entry rebuilt
with a warning saying which file changed. Hashing ``sd15``'s 3.4 GB at every load would cost
seconds, so each file is hashed once per identity: ``.<entry>.verified.json`` beside the entry
keeps, per file, the stat fields that any write changes (size, mtime, ctime, inode, device) as
they were when its hash last matched; a load only stats the files, and re-hashes just those
whose stamp changed (a touched, copied or edited file). ctime cannot be set back by a user
(``touch -d`` and ``os.utime`` set mtime, and update ctime), so an edit that restores the mtime
is still re-hashed.

Builders of the same entry (pytest-xdist workers) serialise on an ``flock`` so that the
expensive ``sd15`` build happens once; where no lock is available the atomic rename still
decides: the first rename wins and the loser discards its copy.

A session on a CUDA device builds its entries on that device (``ensure_cached(device=...)``):
the models are initialised by the GPU in seconds instead of by the host's cores (``sd15``:
1.37e9 weights, 13.8 s of a 2-core CPU), then saved as a CPU build is. The weights are not the
CPU build's: torch's CUDA generator (Philox) draws other numbers than the CPU's (Mersenne
Twister) for the same seed, and may draw differently on another GPU model (its random kernels
size their grids by the SM count). So where the weights were drawn is part of the entry's
identity (``built_on``: a CUDA-built entry has its own key and a ``-cuda`` name, and a CPU
build's key is what it was without that field), and whichever CUDA build of a key is
published first is the entry. The figures do not depend on which draw an entry holds: memory
is the tensors' shapes and dtypes, and a dense kernel's time does not depend on the values;
images are only ever compared within one session, between pipelines of the same entry.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from pytest_sdmem.base.atomic import write_atomic
from pytest_sdmem.base.units import format_size
from pytest_sdmem.building.pipelines.build import build_pipeline
from pytest_sdmem.building.pipelines.configs import get_spec
from pytest_sdmem.building.pipelines.errors import ModelError
from pytest_sdmem.building.pipelines.quiet import quiet_progress_bars
from pytest_sdmem.building.pipelines.tokenizer import VOCAB_WORDS

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone keeps entries consistent.
    fcntl = None  # type: ignore[assignment]

#: Bumped whenever the way entries are built or laid out changes, so old entries are not reused.
FORMAT_VERSION = 3
#: An entry also holds its weights in fp16, as diffusers' "fp16" variant files: an fp16 load
#: reads them as they are instead of casting the fp32 files on the CPU (sd15 on a 2-core CPU:
#: 3.2 s per load with the cast, 0.35 s from the variant; the GPU tier loads it in fp16 about
#: 27 times, docs/gpu-time-budget.md). They are the fp32 weights cast by torch once at build
#: time, so they hold the bytes a cast at load time gives.
HALF_VARIANT = "fp16"
#: Written last into an entry; an entry without a valid one is incomplete.
MARKER_NAME = "sdmem-entry.json"
_HASH_CHUNK = 8 * 2**20


class CacheWarning(UserWarning):
    """A cache entry changed after it was built, and was rebuilt."""
_TEMP_PREFIX = ".tmp-"
_STALE_PREFIX = ".stale-"


@dataclass(frozen=True)
class EntryCost:
    """What one cache entry of a synthetic model costs, from its parameter and buffer counts.

    ``disk``: the fp32 weights plus the fp16 variant, 6 bytes per element. ``host_memory``:
    the peak while building it on the CPU: the fp32 model (4 bytes per element) plus one
    component's fp32 bytes, which safetensors serialises in memory before writing them.
    """

    elements: int
    largest_component: int

    @property
    def disk(self) -> int:
        return 6 * self.elements

    @property
    def host_memory(self) -> int:
        return 4 * (self.elements + self.largest_component)

    def __str__(self) -> str:
        return (f"{format_size(self.disk)} of disk and {format_size(self.host_memory)} of host "
                "memory to build")


def entry_cost(model: str) -> EntryCost:
    """The cost of ``model``'s cache entry, counted on the meta device (nothing allocated)."""
    pipe = build_pipeline(model, device="meta")
    # Tied weights (T5's embedding, under two names) are one tensor, saved once.
    sizes = [sum(t.numel() for t in {id(t): t for t in module.state_dict(keep_vars=True)
                                     .values()}.values())
             for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    return EntryCost(sum(sizes), max(sizes))


def _checker_kept(model: str, safety_checker: bool) -> bool:
    """Whether the entry holds a safety checker: only models that ship one (SD 1.x) do."""
    return safety_checker and get_spec(model).has_safety_checker


def build_device(device: str | torch.device) -> torch.device:
    """Where an entry for a session on ``device`` is built: on that device if it is a CUDA
    one, else on the CPU (see the module docstring)."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def cache_key(model: str, *, seed: int = 0, safety_checker: bool = False,
              built_on: str = "cpu") -> str:
    """Hash of everything that determines an entry's content: architecture, seed, format, and
    the device type whose generator drew the weights (``built_on``, "cpu" or "cuda")."""
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "spec": get_spec(model).as_dict(),
        "vocab_words": list(VOCAB_WORDS),
        "seed": seed,
        "safety_checker": _checker_kept(model, safety_checker),
    }
    if built_on != "cpu":  # the CPU is the default builder: its keys name no device
        payload["built_on"] = built_on
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_name(model: str, *, seed: int = 0, safety_checker: bool = False,
               built_on: str = "cpu") -> str:
    """Directory name of an entry: readable prefix, then the key."""
    key = cache_key(model, seed=seed, safety_checker=safety_checker, built_on=built_on)
    checker = "-safety" if _checker_kept(model, safety_checker) else ""
    device = "" if built_on == "cpu" else f"-{built_on}"
    return f"{model}-seed{seed}{checker}{device}-{key[:16]}"


def _files(directory: Path) -> list[str]:
    """Every file of an entry but its marker, as relative POSIX paths."""
    return [path.relative_to(directory).as_posix() for path in sorted(directory.rglob("*"))
            if path.is_file() and path != directory / MARKER_NAME]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    """What any write to ``path`` changes (see the module docstring)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _stamps_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.verified.json")


def _read_stamps(entry: Path) -> dict[str, Any]:
    try:
        stamps = json.loads(_stamps_path(entry).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _write_stamps(entry: Path, stamps: dict[str, list[int]]) -> None:
    """Remember the files verified just now; a cache that cannot be written (read-only) is
    verified again next time, nothing worse."""
    try:
        write_atomic(_stamps_path(entry), json.dumps(stamps, sort_keys=True))
    except OSError:
        pass


def entry_problem(entry: Path, key: str) -> str | None:
    """Why ``entry`` is not a complete, unchanged entry for ``key``; None when it is.

    Its files must be exactly the marker's, each of its size and SHA-256. A file is hashed
    only when its stamp differs from the one kept when it was last verified.
    """
    try:
        marker = json.loads((entry / MARKER_NAME).read_text())
        if marker["key"] != key:
            return "its marker is for another key"
        files: dict[str, dict[str, Any]] = marker["files"]
        present = _files(entry)
        if sorted(files) != present:
            changed = sorted(set(files) ^ set(present))
            return f"files added or removed since it was built: {', '.join(changed)}"
        known = _read_stamps(entry)
        stamps = {}
        for name, expected in files.items():
            stamp = _stamp(entry / name)
            if stamp[0] != expected["size"]:
                return f"{name} is {stamp[0]} bytes, built as {expected['size']}"
            if known.get(name) != stamp and _sha256(entry / name) != expected["sha256"]:
                return f"{name} changed since it was built (its SHA-256 differs)"
            stamps[name] = stamp
    except FileNotFoundError:
        return "it is incomplete (no marker, or a file missing)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its marker cannot be read ({exc})"
    if stamps != known:
        _write_stamps(entry, stamps)
    return None


def is_complete(entry: Path, key: str) -> bool:
    """Whether ``entry`` is complete and unchanged since it was built (see entry_problem)."""
    return entry_problem(entry, key) is None


def _hash_all(directory: Path, names: list[str]) -> list[str]:
    """The SHA-256 of each file, files hashed in parallel threads (hashlib and file reads
    release the GIL): ``sd15``'s 8.2 GB in the time of its largest file, 3.4 GB, with enough
    cores, instead of all of them one after another (0.77 GB/s per core measured on the
    development machine)."""
    workers = max(1, min(len(names), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda name: _sha256(directory / name), names))


def _write_marker(directory: Path, key: str, model: str, seed: int, safety_checker: bool,
                  built_on: str) -> None:
    names = _files(directory)
    hashes = _hash_all(directory, names)
    marker: dict[str, Any] = {
        "key": key,
        "format_version": FORMAT_VERSION,
        "model": model,
        "seed": seed,
        "safety_checker": safety_checker,
        "built_on": built_on,
        "diffusers_version": diffusers.__version__,
        "files": {name: {"size": (directory / name).stat().st_size, "sha256": digest}
                  for name, digest in zip(names, hashes, strict=True)},
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


def _publish(temp: Path, entry: Path, key: str) -> bool:
    """Rename a complete temporary directory into place, unless another builder won; returns
    whether this one won.

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
        return False
    return True


def check_disk_space(model: str, cache_dir: Path) -> None:
    """Refuse to start an entry the cache directory's file system cannot hold: a full disk
    half-way through a multi-GB write fails late, and can starve everything else on it."""
    cost = entry_cost(model)
    free = shutil.disk_usage(cache_dir).free
    if free < cost.disk:
        raise ModelError(
            f"synthetic model {model!r} needs {cost} its cache entry, but {cache_dir} has "
            f"{format_size(free)} free: free some space or point --sdmem-cache-dir at a larger "
            "disk"
        )


def ensure_cached(
    model: str, cache_dir: Path, *, seed: int = 0, safety_checker: bool = False,
    device: str | torch.device = "cpu",
) -> Path:
    """The directory of a complete cache entry for a synthetic model, built if needed: on
    ``device`` when it is a CUDA device, else on the CPU (``build_device``; the entry of a CUDA
    build is its own, see the module docstring).

    Inside ``cache_dir`` only the entry's own names are ever written or removed (the entry,
    ``.<entry>.lock``, ``.<entry>.verified.json``, ``.tmp-<entry>-*``, ``.stale-<entry>-*``),
    and an existing entry is replaced only when it is incomplete or changed since it was
    built (with a :class:`CacheWarning` naming what changed): nothing else is touched.
    An entry that the disk cannot hold is refused before anything is written (ModelError
    stating its cost, see :class:`EntryCost`).
    """
    builder = build_device(device)
    key = cache_key(model, seed=seed, safety_checker=safety_checker, built_on=builder.type)
    name = entry_name(model, seed=seed, safety_checker=safety_checker, built_on=builder.type)
    cache_dir = Path(cache_dir)
    entry = cache_dir / name
    problem = entry_problem(entry, key)
    if problem is None:
        return entry
    if entry.exists():
        warnings.warn(CacheWarning(f"synthetic model cache entry {entry}: {problem}; "
                                   "rebuilding it"), stacklevel=2)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(cache_dir / f".{name}.lock") as locked:
            if is_complete(entry, key):
                return entry  # built by another worker while this one waited
            if locked:
                _remove_leftovers(cache_dir, name)
            check_disk_space(model, cache_dir)
            # Not tempfile.mkdtemp: its 0o700 mode would survive the rename and hide the entry
            # from other users of a shared cache directory; mkdir honours the umask.
            temp = cache_dir / f"{_TEMP_PREFIX}{name}-{uuid.uuid4().hex}"
            temp.mkdir()
            try:
                _build_into(temp, model, seed, safety_checker, builder)
                _write_marker(temp, key, model, seed, _checker_kept(model, safety_checker),
                              builder.type)
                if _publish(temp, entry, key):  # its files were hashed just now, unchanged
                    _write_stamps(entry, {n: _stamp(entry / n) for n in _files(entry)})
            finally:
                shutil.rmtree(temp, ignore_errors=True)  # gone when published; else discarded
    except OSError as exc:
        raise ModelError(
            f"could not write the cache entry of synthetic model {model!r} in {cache_dir}: {exc}"
        ) from exc
    return entry


def _build_into(directory: Path, model: str, seed: int, safety_checker: bool,
                device: torch.device) -> None:
    """Build the pipeline on ``device`` and save it into ``directory`` (``_save_built``).

    A CUDA build's memory goes back to the driver afterwards, once nothing of the pipeline is
    referenced any more: the allocator would otherwise keep the blocks reserved, and the
    session's ``reserved`` figures would count them.
    """
    with quiet_progress_bars():
        _save_built(directory, build_pipeline(model, seed=seed, safety_checker=safety_checker,
                                              device=device))
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _save_built(directory: Path, pipe: DiffusionPipeline) -> None:
    """Save ``pipe`` in fp32 and as the fp16 variant; safetensors copies a device's tensors to
    the host as it saves them."""
    pipe.save_pretrained(directory, safe_serialization=True)
    # Each model cast itself: the pipeline's .to(dtype) warns about modules kept in fp32, which
    # SD's models do not have (from_pretrained's cast gives the same bytes:
    # tests/unit/test_pipelines.py).
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.to(torch.float16)
    pipe.save_pretrained(directory, safe_serialization=True, variant=HALF_VARIANT)
