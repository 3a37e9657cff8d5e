"""The counting dispatch mode: every tensor an op reads or returns, shown to the counters.

A ``TorchDispatchMode`` sees every op's inputs and outputs in the thread it is pushed in. A
storage counter (``storage.StorageCounter``) pushes one in the thread that activates it; for
the counters that count in every thread (``all_threads``), each thread that ``threads`` entered
runs a mode for its whole life (``enter_thread``), which serves whichever of those counters
are listening (``listen``) and does nothing while none is.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Protocol

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

# Argument types that never hold a tensor; skipping them by type keeps the walk over an op's
# size and stride lists cheap.
_LEAF_TYPES = frozenset(
    {int, float, bool, complex, str, type(None)}
    | {torch.dtype, torch.device, torch.layout, torch.memory_format}
)


class Counter(Protocol):
    """What the mode shows tensors to: a storage counter."""

    def see(self, tensor: torch.Tensor) -> None: ...


class CountingMode(TorchDispatchMode):
    """Dispatch mode that shows the counter every tensor an op reads or returns.

    It returns the op's outputs unchanged and never alters arguments, so code under it
    behaves as without it.
    """

    # Higher-order operators (flex_attention, cond, ...) otherwise raise NotImplementedError
    # under any user mode. They pass through __torch_dispatch__ like ops (on older torch, 2.5
    # among them, through the rules ``__enter__`` registers): their outputs are counted, what
    # they allocate and free inside is not.
    supports_higher_order_operators = True

    def __init__(self, counter: Counter | None):
        """``counter`` None: a thread's lifelong mode, counting for the active all-threads
        counters (``_ACTIVE``), and doing nothing while there is none."""
        super().__init__()
        self._counter = counter

    def __enter__(self) -> CountingMode:
        if not _HOP_FLAG_HONOURED:
            _register_hop_rules()
        return super().__enter__()

    def _see(self) -> Any:
        """The function to show each tensor to, or None when no counter is listening."""
        if self._counter is not None:
            return self._counter.see
        active = _ACTIVE
        if not active:
            return None
        if len(active) == 1:
            return active[0].see
        return lambda tensor: [counter.see(tensor) for counter in active]

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Let ``torch.compile`` compile while counting is on.

        With the default (False) dynamo refuses to compile under any user dispatch mode and
        silently runs eagerly, which would change what a ``torch.compile`` technique measures
        (latency above all). The price: buffers a compiled artifact allocates and frees without
        passing through the dispatcher are not seen (its outputs and extern-kernel buffers are).
        """
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        see = self._see()
        if see is None:  # a thread's lifelong mode while nothing is measured
            return func(*args, **(kwargs or {}))
        # The top level is unrolled here because this runs for every op: a function call per
        # argument would cost more than the counting itself.
        for arg in args:
            if isinstance(arg, torch.Tensor):
                see(arg)
            elif type(arg) not in _LEAF_TYPES:
                _visit(arg, see)
        if kwargs:
            _visit(kwargs, see)
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            see(out)
        else:
            _visit(out, see)
        return out


#: Older torch (2.5 among them) does not read ``supports_higher_order_operators``: an operator
#: under a user mode raises NotImplementedError unless the mode's type has a rule registered on
#: that operator (``HigherOrderOperator.python_key_table``).
_HOP_FLAG_HONOURED = hasattr(TorchDispatchMode, "supports_higher_order_operators")


def _register_hop_rules() -> None:
    """Give every higher-order operator created so far the rule newer torch applies to a mode
    with the flag: the mode popped (torch pops it before calling a rule), the operator passed to
    its ``__torch_dispatch__``. Run at each mode's entry, so operators created by a later
    import get theirs when the next mode is entered."""
    from torch._ops import _higher_order_ops

    for hop in tuple(_higher_order_ops.values()):
        if CountingMode not in hop.python_key_table:
            hop.py_impl(CountingMode)(functools.partial(_hop_rule, hop))


def _hop_rule(hop: Any, mode: CountingMode, *args: Any, **kwargs: Any) -> Any:
    return mode.__torch_dispatch__(hop, (), args, kwargs)


def _visit(obj: Any, see: Any) -> None:
    """Call ``see`` on every tensor in an op's arguments or outputs.

    aten schemas only nest tensors in tuples and lists, which are walked directly: going
    through ``pytree.tree_leaves`` for every op costs about 5 µs, more than the rest of the
    per-op work together. Any other container pytree knows is still handed to pytree.
    """
    if isinstance(obj, torch.Tensor):
        see(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            if type(item) not in _LEAF_TYPES:
                _visit(item, see)
    elif isinstance(obj, dict):
        for item in obj.values():
            if type(item) not in _LEAF_TYPES:
                _visit(item, see)
    elif type(obj) in pytree.SUPPORTED_NODES:
        for leaf in pytree.tree_leaves(obj):
            if isinstance(leaf, torch.Tensor):
                see(leaf)


# The active counters that count in every thread (``all_threads``), which the lifelong mode of
# each entered thread serves. Replaced, never mutated, so a dispatch reads it without a lock.
_ACTIVE: tuple[Counter, ...] = ()
_ACTIVE_LOCK = threading.Lock()


def listen(counter: Counter, on: bool) -> None:
    """Have the entered threads' modes count for ``counter`` (or stop)."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        others = tuple(c for c in _ACTIVE if c is not counter)
        _ACTIVE = (*others, counter) if on else others


def enter_thread() -> None:
    """Run a counting mode in the calling thread until it ends (``threads`` calls this at the
    start of every new thread): it counts for whichever all-threads counters are active.

    The mode is left again when the thread's ``run`` has returned (threading then calls the
    thread's ``_delete``): a dispatch mode still on a thread's mode stack when the thread ends
    is freed by torch without the interpreter, which aborts the process at exit
    ("terminate called without an active exception")."""
    mode = CountingMode(None)
    mode.__enter__()
    thread = threading.current_thread()
    finish = getattr(thread, "_delete", None)
    if finish is None:  # a Python without the hook: the mode stays to the thread's end
        return

    def leave_then_finish() -> None:
        mode.__exit__(None, None, None)
        finish()

    thread._delete = leave_then_finish  # type: ignore[method-assign]


