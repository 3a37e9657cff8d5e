"""``load_pipeline``: a synthetic model from the cache (or built on its GPU), or a real one
from a path or the hub, with the pipeline class its ``model_index.json`` names.

Everything goes through ``from_pretrained(..., use_safetensors=True)``: a regression gate on a
shared runner must not execute code from a checkpoint, and pickle weights can. Failures to
find or read a model become one ``ModelError`` saying what was asked, what is wrong and what
is accepted, with the library's exception chained for whoever needs the details.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from pytest_sdmem.building.pipelines.build import build_pipeline
from pytest_sdmem.building.pipelines.cache import HALF_VARIANT, ensure_cached, entry_cost
from pytest_sdmem.building.pipelines.configs import SYNTHETIC_MODELS, TINY_MODELS, get_spec
from pytest_sdmem.building.pipelines.errors import ModelError
from pytest_sdmem.building.pipelines.quiet import quiet_progress_bars

#: Weight files that are Python pickles (torch.save / legacy checkpoints).
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})
#: The family of each supported diffusers pipeline class, as model_index.json names them
#: (StableDiffusionPipeline is SD 1.x's or SD 2.x's: see family_of).
CLASS_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
PIPELINE_CLASSES: tuple[str, ...] = tuple(CLASS_FAMILIES)
#: SD 2.x's UNet attends to OpenCLIP-H's 1024-d text states, SD 1.x's to CLIP-L's 768.
_SD2_CROSS_ATTENTION_DIM = 1024
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


def _safety_kwargs(pipeline_class: str, safety_checker: bool) -> dict[str, Any]:
    """Without its safety checker, for the one class of the families that has one."""
    if safety_checker or pipeline_class != "StableDiffusionPipeline":
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


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
            f"DiffusionPipeline.from_pretrained({str(directory)!r}, use_safetensors=False)"
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


def pipeline_class_of(model: str, source: str, *, local_only: bool) -> str:
    """The pipeline class ``source``'s model_index.json names (read alone, before any weight),
    or a ModelError when it is not one of the supported families'."""
    with quiet_progress_bars():
        config = DiffusionPipeline.load_config(source, local_files_only=local_only)
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in PIPELINE_CLASSES:
        raise ModelError(
            f"model {model!r} is a {name or 'pipeline without a _class_name'} "
            f"(its model_index.json): pytest-sdmem loads {', '.join(PIPELINE_CLASSES)}"
        )
    return str(name)


def _from_pretrained(
    source: str, *, dtype: torch.dtype, local_only: bool, safety_checker: bool,
    pipeline_class: str, variant: str | None = None,
) -> DiffusionPipeline:
    """``from_pretrained`` with ``torch_dtype``, the keyword every supported diffusers accepts.

    diffusers 0.42 prefers ``dtype`` and warns about ``torch_dtype`` (removal planned for 1.0),
    but older releases reject ``dtype``: keep the portable keyword and drop only that warning.
    """
    with quiet_progress_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch_dtype` is deprecated", FutureWarning)
        return getattr(diffusers, pipeline_class).from_pretrained(
            source,
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=local_only,
            variant=variant,
            **_safety_kwargs(pipeline_class, safety_checker),
        )


def _load_external(
    model: str, *, dtype: torch.dtype, safety_checker: bool
) -> DiffusionPipeline:
    path = Path(model).expanduser()
    if path.exists():
        source = _local_source(model, path, safety_checker=safety_checker)
        try:
            return _from_pretrained(
                source, dtype=dtype, local_only=True, safety_checker=safety_checker,
                pipeline_class=pipeline_class_of(model, source, local_only=True),
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
            model, dtype=dtype, local_only=offline, safety_checker=safety_checker,
            pipeline_class=pipeline_class_of(model, model, local_only=offline),
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(model, offline, exc) from exc


def _hub_error(model: str, offline: bool, exc: BaseException) -> ModelError:
    """A hub id that could not be read: why, and what to do about it."""
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
    return ModelError(f"model {model!r} {reason}. Cause: {_first_line(exc)}")


def _source(model: str) -> tuple[str, bool]:
    """Where a real model's files are read from, and whether only locally (a path, or the hub
    with HF_HUB_OFFLINE set)."""
    path = Path(model).expanduser()
    return (str(path), True) if path.exists() else (model, hub_offline())


def _unet_cross_attention_dim(source: str, *, local_only: bool) -> int | None:
    try:
        if Path(source).is_dir():
            config_path = Path(source) / "unet" / "config.json"
        else:
            config_path = Path(hf_hub_download(source, "unet/config.json",
                                               local_files_only=local_only))
        value = json.loads(config_path.read_text()).get("cross_attention_dim")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


@functools.lru_cache(maxsize=32)
def family_of(model: str) -> str:
    """The family (sd1, sd2, sdxl, sd3, flux) of a synthetic model, or of a real one from its
    model_index.json (a StableDiffusionPipeline whose UNet attends to 1024-d text states is
    SD 2.x); a ModelError when it cannot be read or is none of them."""
    if model in SYNTHETIC_MODELS:
        return get_spec(model).family
    source, local_only = _source(model)
    is_path = Path(model).expanduser().exists()
    if not is_path and not _is_hub_id(model):
        raise ModelError(f"model {model!r}: no such file or directory; {_ACCEPTED}")
    try:
        family = CLASS_FAMILIES[pipeline_class_of(model, source, local_only=local_only)]
    except (OSError, ValueError) as exc:
        if not is_path:
            raise _hub_error(model, local_only, exc) from exc
        raise ModelError(f"model {model!r}: cannot read its model_index.json "
                         f"({_first_line(exc)}); {_ACCEPTED}") from exc
    if family == "sd1" and _unet_cross_attention_dim(
            source, local_only=local_only) == _SD2_CROSS_ATTENTION_DIM:
        return "sd2"
    return family


def _build_on_device(model: str, *, dtype: torch.dtype, device: str | None,
                     seed: int) -> DiffusionPipeline:
    """A full-size model that is not cached: built on its GPU in ``dtype`` (seconds), or a
    ModelError saying why not on a CPU and what to run there instead."""
    if device is None or torch.device(device).type in ("cpu", "meta"):
        tiny = TINY_MODELS[get_spec(model).family]
        raise ModelError(
            f"synthetic model {model!r} is built directly on a GPU (--gpu); on a CPU it would "
            f"need {entry_cost(model)} a cache entry. On a CPU use its tiny variant {tiny!r}, "
            "or --sdmem-estimate for its GPU memory"
        )
    return build_pipeline(model, seed=seed, device=device, dtype=dtype)


def load_pipeline(
    model: str,
    *,
    dtype: torch.dtype,
    cache_dir: Path,
    seed: int = 0,
    safety_checker: bool = False,
    device: str | None = None,
) -> DiffusionPipeline:
    """A fresh pipeline of its family's class, weights in ``dtype``, on the CPU unless said.

    A synthetic model with a cache entry (the tiny ones, SD 1.5, SD 2.1) is built once into
    ``cache_dir`` (see ``ensure_cached``: on ``device`` when it is a CUDA one) and loaded from
    there with ``from_pretrained``, the real loading path; the larger ones (SDXL, SD 3,
    Flux) are built directly on ``device``, a GPU, in ``dtype``. Anything else: a local
    pipeline directory or a hub id whose model_index.json names a supported pipeline class,
    safetensors only, honouring HF_HUB_OFFLINE. ``safety_checker=False`` loads any model
    without its safety checker (as diffusers does with ``safety_checker=None``); True keeps
    the one it ships.
    """
    if model in SYNTHETIC_MODELS and not get_spec(model).cached:
        pipe = _build_on_device(model, dtype=dtype, device=device, seed=seed)
    elif model in SYNTHETIC_MODELS:
        entry = ensure_cached(model, cache_dir, seed=seed, safety_checker=safety_checker,
                              device=device or "cpu")
        try:
            pipe = _from_pretrained(
                str(entry), dtype=dtype, local_only=True, safety_checker=safety_checker,
                pipeline_class=get_spec(model).pipeline_class,
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
