"""Where an API this plugin calls differs across the dependency range in pyproject.toml.

The lower bounds there are the releases the workflow's ``lowest`` job tests; the newest releases
are what the other jobs install. Code that must behave the same on both ends asks this module
instead of testing versions or signatures itself, so each difference is handled in one place and
``tests/unit/test_compat.py`` checks the side the installed release takes.

Imports of torch happen inside the functions: the plugin module must stay cheap to import.
"""

from __future__ import annotations

import inspect


def history_clears_on_start() -> bool:
    """Whether ``torch.cuda.memory._record_memory_history`` takes ``clear_history``.

    The keyword came with pytorch PR 149352 (March 2025); the oldest supported torch lacks it.
    Read from the signature, not the version, so that builds between releases answer right.
    """
    import torch

    record = torch.cuda.memory._record_memory_history
    return "clear_history" in inspect.signature(record).parameters


def start_memory_history(max_entries: int) -> None:
    """Record the CUDA caching allocator's history afresh: allocations with Python stacks, frees
    without (their frames go unused), at most ``max_entries`` events.

    "Afresh" drops the events recorded before, so that a snapshot shows one test's events only.
    Where the keyword is missing the same comes from switching recording off first: torch drops
    the history only then (pytorch PR 120436), not when recording is started again.
    """
    import torch

    record = torch.cuda.memory._record_memory_history
    options = {"enabled": "all", "context": "alloc", "stacks": "python", "max_entries": max_entries}
    if history_clears_on_start():
        record(**options, clear_history=True)
    else:
        record(enabled=None)
        record(**options)
