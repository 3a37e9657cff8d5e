"""Progress bars of diffusers, transformers and the hub client, off for one block only; and
transformers' notice about image processors without torchvision, off while diffusers loads."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import huggingface_hub.utils as hub_utils
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence the bars that saving and loading print ("Loading pipeline components...",
    "Loading weights", "Writing model shards", downloads), then restore each library's setting.

    Scoped rather than global because the plugin runs inside the user's process: a user who
    wants the bars elsewhere keeps them. transformers' switch also flips the hub's global
    switch (and warns when HF_HUB_DISABLE_PROGRESS_BARS pins it), so the hub's own state is
    restored last and those warnings are not shown.
    """
    diffusers_enabled = diffusers_logging.is_progress_bar_enabled()
    transformers_enabled = transformers_logging.is_progress_bar_enabled()
    hub_disabled = hub_utils.are_progress_bars_disabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if diffusers_enabled:
                diffusers_logging.enable_progress_bar()
            if transformers_enabled:
                transformers_logging.enable_progress_bar()
            if hub_disabled:
                hub_utils.disable_progress_bars()
            else:
                hub_utils.enable_progress_bars()


@contextmanager
def quiet_backend_fallbacks() -> Iterator[None]:
    """Hold back transformers' one-time notice that an image processor (``CLIPImageProcessor``,
    which the safety checker's feature extractor is) falls back to its PIL version because
    torchvision is not installed.

    The PIL version is all these pipelines need, so the notice is noise on every run that does
    not have torchvision. Only the logger that gives it is raised to ERROR, only for the block
    (importing diffusers' pipelines), and its level is restored; other warnings still show.
    """
    logger = logging.getLogger("transformers.utils.import_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
