"""Entering every thread started from now on, so that CPU storage counting sees its tensors.

torch dispatch modes are per thread, and Python runs code in a new thread before its target
only through ``threading.setprofile``. So the hook is installed when this package is imported
(the plugin imports it when pytest loads it, before any conftest), and kept for the process.
It enters threads only once ``enable`` was called, which the CPU memory backend does when it
is created (the setup of the first test that measures on the CPU or estimates, or a user's
``get_backend("cpu")``): from then on each new thread gets a lifelong counting mode (see
``dispatch.enter_thread``; it does nothing while no counter is active). Until then a thread
costs one profile event and nothing more, so a pytest run that measures nothing pays no
dispatch mode in its threads. This module does not import torch: pytest loads the plugin in
every run.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

#: Threads that run the counting mode for their whole life.
ENTERED: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

_lock = threading.Lock()
_installed = False
_enabled = False
_previous: Any = None


def install() -> None:
    """Make every thread started from now on run ``_on_start`` first (once a process)."""
    global _installed, _previous
    with _lock:
        if _installed:
            return
        _previous = threading.getprofile()
        threading.setprofile(_on_start)
        _installed = True


def enable() -> None:
    """Enter every thread started from now on (the CPU backend calls this when created)."""
    global _enabled
    _enabled = True


def _on_start(frame: Any, event: str, arg: Any) -> None:
    """threading's profile hook, run at a new thread's first event: enters the thread once
    ``enable`` was called, then hands it back to the profile hook set before ours (normally
    none), so it costs nothing after this first event."""
    sys.setprofile(_previous)
    if _enabled:
        from pytest_sdmem.measuring.memory.dispatch import (
            enter_thread,  # imported already: it enabled us
        )

        enter_thread()
        ENTERED.add(threading.current_thread())
    if _previous is not None:
        _previous(frame, event, arg)


#: Threads known never to make a tensor, which may have started before ``enable``: tqdm's
#: monitor (``tqdm._monitor.TMonitor``) starts with the first progress bar, a diffusers
#: pipeline's included, and only sleeps and reads its bars' clocks.
HARMLESS_THREAD_TYPES = frozenset({("tqdm._monitor", "TMonitor")})


def blind_threads() -> list[threading.Thread]:
    """Live Python threads, other than the calling one and the known harmless ones, that run
    no counting mode."""
    me = threading.current_thread()
    return [t for t in threading.enumerate()
            if t is not me and t not in ENTERED
            and (type(t).__module__, type(t).__name__) not in HARMLESS_THREAD_TYPES]
