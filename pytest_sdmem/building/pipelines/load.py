"""``load_pipeline``: a synthetic model from the cache, or a real one from a path or the hub.

Everything goes through ``from_pretrained(..., use_safetensors=True)``: a regression gate on a
shared runner must not execute code from a checkpoint, and pickle weights can. Failures to
find or read a model become one ``ModelError`` saying what was asked, what is wrong and what
is accepted, with the library's exception chained for whoever needs the details.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from pytest_sdmem.building.pipelines.cache import HALF_VARIANT, ensure_cached
from pytest_sdmem.building.pipelines.configs import SYNTHETIC_MODELS
from pytest_sdmem.building.pipelines.errors import ModelError
from pytest_sdmem.building.pipelines.quiet import quiet_progress_bars

#: Weight files that are Python pickles (torch.save / legacy checkpoints).
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})
_ACCEPTED = (
    f"expected one of {', '.join(SYNTHETIC_MODELS)}, a local diffusers pipeline directory "
    "(saved with save_pretrained, safetensors weights) or a Hugging Face hub id such as "
    "'stable-diffusion-v1-5/stable-diffusion-v1-5'"
)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not when huggingface_hub was
    imported, so that a session that sets it after start-up is honoured."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _safety_kwargs(safety_checker: bool) -> dict[str, Any]:
    return {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}


def _pickle_error(model: str, where: str, files: list[str], convert: str) -> ModelError:
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return ModelError(
        f"model {model!r}: {where} holds pickle weights only ({shown}). Pickle checkpoints can "
        "execute arbitrary code when loaded, so pytest-sdmem loads safetensors weights only. "
        f"Convert them once, in an environment you trust: {convert}"
    )


def _weight_files(directory: Path) -> list[Path]:
    return [
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix in PICKLE_SUFFIXES | {".safetensors"}
    ]


def refuse_pickle_only(model: str, directory: Path, *, safety_checker: bool) -> None:
    """Raise ModelError if the directory, or one of its component folders that will be loaded,
    has pickle weights and no safetensors ones (a folder with both loads its safetensors).

    Only the diffusers layout is inspected (the directory and its immediate subfolders), so
    pointing at a large unrelated tree costs nothing and reports nothing from deep inside it.
    """
    skipped = set() if safety_checker else {"safety_checker"}
    folders = [directory] + [
        sub for sub in sorted(directory.iterdir()) if sub.is_dir() and sub.name not in skipped
    ]
    pickle_only = [
        path.relative_to(directory).as_posix()
        for folder in folders
        if (files := _weight_files(folder))
        and all(path.suffix in PICKLE_SUFFIXES for path in files)
        for path in sorted(files)
    ]
    if not pickle_only:
        return
    if (directory / "model_index.json").is_file():
        convert = (
            f"StableDiffusionPipeline.from_pretrained({str(directory)!r}, use_safetensors=False)"
            f".save_pretrained({str(directory)!r}, safe_serialization=True)"
        )
    else:
        convert = (
            "StableDiffusionPipeline.from_single_file(CHECKPOINT)"
            ".save_pretrained(DIRECTORY, safe_serialization=True), then pass DIRECTORY"
        )
    raise _pickle_error(model, str(directory), pickle_only, convert)


def _local_source(model: str, path: Path, *, safety_checker: bool) -> str:
    """Check a local path before diffusers sees it; returns it as from_pretrained wants it."""
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise _pickle_error(
                model,
                "this single-file checkpoint",
                [path.name],
                f"StableDiffusionPipeline.from_single_file({str(path)!r})"
                ".save_pretrained(DIRECTORY, safe_serialization=True), then pass DIRECTORY",
            )
        raise ModelError(
            f"model {model!r} is a file, not a pipeline directory: {_ACCEPTED} (convert a "
            "single-file checkpoint with StableDiffusionPipeline.from_single_file(...)"
            ".save_pretrained(DIRECTORY))"
        )
    refuse_pickle_only(model, path, safety_checker=safety_checker)
    return str(path)


def _is_hub_id(model: str) -> bool:
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _first_line(exc: BaseException, limit: int = 300) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _from_pretrained(
    source: str, *, dtype: torch.dtype, local_only: bool, safety_checker: bool,
    variant: str | None = None,
) -> StableDiffusionPipeline:
    """``from_pretrained`` with ``torch_dtype``, the keyword every supported diffusers accepts.

    diffusers 0.42 prefers ``dtype`` and warns about ``torch_dtype`` (removal planned for 1.0),
    but older releases reject ``dtype``: keep the portable keyword and drop only that warning.
    """
    with quiet_progress_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch_dtype` is deprecated", FutureWarning)
        return StableDiffusionPipeline.from_pretrained(
            source,
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=local_only,
            variant=variant,
            **_safety_kwargs(safety_checker),
        )


def _load_external(
    model: str, *, dtype: torch.dtype, safety_checker: bool
) -> StableDiffusionPipeline:
    path = Path(model).expanduser()
    if path.exists():
        source = _local_source(model, path, safety_checker=safety_checker)
        try:
            return _from_pretrained(
                source, dtype=dtype, local_only=True, safety_checker=safety_checker
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load model {model!r} from the directory {path}: {_first_line(exc)}; "
                f"{_ACCEPTED}"
            ) from exc
    if not _is_hub_id(model):
        raise ModelError(f"model {model!r}: no such file or directory; {_ACCEPTED}")
    offline = hub_offline()
    try:
        return _from_pretrained(
            model, dtype=dtype, local_only=offline, safety_checker=safety_checker
        )
    except (OSError, ValueError) as exc:
        if offline:
            reason = (
                "is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set: download it first (hf download {model}) or unset HF_HUB_OFFLINE"
            )
        else:
            reason = (
                "is neither a local directory nor loadable from the Hugging Face hub or its "
                "cache (check the name, your network and access rights)"
            )
        raise ModelError(f"model {model!r} {reason}. Cause: {_first_line(exc)}") from exc


def load_pipeline(
    model: str,
    *,
    dtype: torch.dtype,
    cache_dir: Path,
    seed: int = 0,
    safety_checker: bool = False,
) -> StableDiffusionPipeline:
    """A fresh ``StableDiffusionPipeline`` on the CPU, weights in ``dtype``.

    ``model`` "tiny"/"sd15": built once into ``cache_dir`` (see ``ensure_cached``) and loaded
    from there. Anything else: a local pipeline directory or a hub id, safetensors only,
    honouring HF_HUB_OFFLINE. ``safety_checker=False`` loads any model without its safety
    checker (as diffusers does with ``safety_checker=None``); True keeps the one it ships.
    """
    if model in SYNTHETIC_MODELS:
        entry = ensure_cached(model, cache_dir, seed=seed, safety_checker=safety_checker)
        try:
            pipe = _from_pretrained(
                str(entry), dtype=dtype, local_only=True, safety_checker=safety_checker,
                variant=HALF_VARIANT if dtype == torch.float16 else None,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load the cached synthetic model {model!r} from {entry}: "
                f"{_first_line(exc)}; delete that directory to rebuild it"
            ) from exc
    else:
        pipe = _load_external(model, dtype=dtype, safety_checker=safety_checker)
    pipe.set_progress_bar_config(disable=True)
    return pipe
