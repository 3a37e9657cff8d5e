"""What a measured test leaves behind on its device: the memory allocated before it starts,
the frames of a failed call released at its teardown, and the leak check after it.

A leak inflates every later test's absolute peak, so it is reported on the test that left it
(a warning, or a failure with ``--sdmem-strict-leaks``).
"""

from __future__ import annotations

import sys
import traceback
import warnings

import pytest

from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.settings import Settings
from pytest_sdmem.measuring.memory import get_backend
from pytest_sdmem.plugin.state import TestState


class SdmemLeakWarning(UserWarning):
    """A measured test left device memory behind, which would inflate later tests' peaks."""


def note_allocated(state: TestState, device: str) -> None:
    """What is allocated on ``device`` before the test's setup: the leak check's zero."""
    backend = get_backend(device)
    backend.settle()
    state.allocated_before = backend.allocated()


def check_leak(nodeid: str, state: TestState, settings: Settings) -> None:
    """Warn (or fail, ``--sdmem-strict-leaks``) when the test left memory allocated."""
    if state.allocated_before is None:
        return
    backend = get_backend(settings.device)
    backend.settle()
    state.leak_bytes = backend.allocated() - state.allocated_before
    if state.leak_bytes > settings.leak_threshold:
        message = (f"{nodeid} left {format_size(state.leak_bytes)} of {settings.device} "
                   f"memory allocated after it ended (threshold "
                   f"{format_size(settings.leak_threshold)}): later tests' absolute peaks will "
                   "include it. Release what the test keeps alive (globals, caches).")
        if settings.strict_leaks:
            pytest.fail(f"{message} (--sdmem-strict-leaks)", pytrace=False)
        warnings.warn(SdmemLeakWarning(message), stacklevel=1)


def release_failed_frames() -> None:
    """Drop the local variables of the frames a failed call's traceback keeps alive.

    pytest keeps the last failure for post-mortem debugging (``sys.last_value`` and
    ``sys.last_traceback``) until the next test's call starts, which is after that test's
    memory window opened: the failed test's tensors would count in the next test's absolute
    peak and in its own leak check. By teardown the report is made and ``--pdb`` has run, so
    the frames' locals are no longer needed; the exception and its traceback stay for a
    debugger. ``frame.clear()`` drops the fast locals, but on Python < 3.13 pytest has already
    read ``f_locals`` (for ``__tracebackhide__``) and that dict is a snapshot that still holds
    them: reading it again after the clear brings it up to date (empty).
    """
    pending = [getattr(sys, "last_value", None)]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        tb = exc.__traceback__
        while tb is not None:
            tb.tb_frame.f_locals  # noqa: B018 - re-syncs the snapshot dict with the cleared frame
            tb = tb.tb_next
        pending += [exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())]
