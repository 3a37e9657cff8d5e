"""pytest_sdmem/compat.py: each side of an API difference across the supported torch range.

The installed torch takes one side; its real signature must accept what compat passes. The other
side is a stand-in with the oldest supported torch's signature, which rejects any keyword that
torch lacks. On a CUDA machine the history is recorded for real and must hold only new events.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from pytest_sdmem.base.compat import history_clears_on_start, start_memory_history

Record = Callable[..., None]


def spy(monkeypatch: pytest.MonkeyPatch, record: Record) -> list[dict[str, Any]]:
    """Put ``record`` in torch's place behind a wrapper that logs each call's arguments, after
    binding them to ``record``'s own signature (a keyword it lacks raises TypeError)."""
    calls: list[dict[str, Any]] = []

    @functools.wraps(record)  # inspect.signature follows __wrapped__: compat sees the real one
    def wrapper(*args: Any, **kwargs: Any) -> None:
        calls.append(dict(inspect.signature(record).bind(*args, **kwargs).arguments))

    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", wrapper)
    return calls


def test_the_installed_torch_accepts_what_compat_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever side the installed torch takes (the keyword since 2025; off, then on, before),
    its real signature binds every call compat makes (CI's lowest job runs torch 2.5)."""
    calls = spy(monkeypatch, torch.cuda.memory._record_memory_history)
    start_memory_history(123)
    start = {"enabled": "all", "context": "alloc", "stacks": "python", "max_entries": 123}
    if history_clears_on_start():
        assert calls == [{**start, "clear_history": True}]
    else:
        assert calls == [{"enabled": None}, start]


def _record_memory_history_2_5(
    enabled: str | None = "all", context: str | None = "all", stacks: str = "all",
    max_entries: int = 2**63 - 1, device: object = None,
) -> None:
    """torch 2.5's signature of ``torch.cuda.memory._record_memory_history``."""


def test_an_older_torch_switches_recording_off_to_clear_the_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = spy(monkeypatch, _record_memory_history_2_5)
    assert not history_clears_on_start()
    start_memory_history(123)
    assert calls == [{"enabled": None},
                     {"enabled": "all", "context": "alloc", "stacks": "python",
                      "max_entries": 123}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records the CUDA allocator's history")
def test_a_restarted_history_holds_only_the_new_events() -> None:
    def allocated_sizes() -> list[int]:
        return [event["size"] for trace in torch.cuda.memory._snapshot()["device_traces"]
                for event in trace if event["action"] == "alloc"]

    try:
        start_memory_history(1000)
        before = torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
        assert 3 << 20 in allocated_sizes()
        start_memory_history(1000)
        after = torch.empty(5 << 20, dtype=torch.uint8, device="cuda")
        assert allocated_sizes() == [5 << 20]
        del before, after
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
