"""Where an estimate's peak is: the phase, the module and function running, and what is live.

A user who disagrees with an estimate needs to see why it is that high. The simulated device
takes a :class:`PeakPlace` each time the allocated figure reaches a new high: the phase (the
model that ran last), the innermost module whose forward is running and the torch function
being called (from :class:`Locator`), the weights on the device, and the largest other blocks
alive then, each with its tensor's shape and dtype and where it was allocated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from pytest_sdmem.base.units import format_size

#: Live blocks listed at the peak, largest first.
TOP_LIVE = 5


@dataclass(frozen=True)
class LiveTensor:
    """One allocated block at the peak: its size, the tensor it holds, where it was made."""

    bytes: int
    tensor: str
    made_in: str

    def __str__(self) -> str:
        return f"{format_size(self.bytes)} {self.tensor} from {self.made_in}"


@dataclass(frozen=True)
class PeakPlace:
    """The moment the peak was reached."""

    allocated: int
    phase: str
    module: str
    op: str
    weights: int
    largest: tuple[LiveTensor, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allocated_bytes"] = data.pop("allocated")
        data["weights_bytes"] = data.pop("weights")
        data["largest"] = [{"bytes": t.bytes, "tensor": t.tensor, "made_in": t.made_in}
                           for t in self.largest]
        return data

    def __str__(self) -> str:
        live = "; ".join(map(str, self.largest)) or "nothing else"
        return (f"peak in {self.phase}, {self.module} calling {self.op}: weights "
                f"{format_size(self.weights)}, largest other blocks: {live}")


def describe_tensor(tensor: torch.Tensor | None) -> str:
    """``(2, 320, 64, 64) float16``, or "?" when the storage was not seen through a tensor."""
    if tensor is None:
        return "?"
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


class Locator(TorchFunctionMode):
    """Knows which module's forward and which torch function are running.

    The module stack comes from global forward hooks (``register_module_forward_pre_hook``)
    and names modules by their path in the pipeline ("vae.decoder.up_blocks.3.resnets.0.conv1");
    the function is the innermost torch function called from Python. Use as a context manager.
    """

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self._names = {id(m): f"{name}.{path}" if path else name
                       for name, model in models.items() for path, m in model.named_modules()}
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self.op = "-"

    @property
    def module(self) -> str:
        return self._stack[-1] if self._stack else "pipeline"

    def where(self) -> tuple[str, str]:
        """The innermost running module and torch function."""
        return self.module, self.op

    def __enter__(self) -> Locator:
        hooks = torch.nn.modules.module
        self._handles = [hooks.register_module_forward_pre_hook(self._enter),
                         hooks.register_module_forward_hook(self._leave, always_call=True)]
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        super().__exit__(*exc_info)

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        outer = self.op
        self.op = getattr(func, "__name__", str(func))
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.op = outer


def largest(blocks: Iterable[tuple[int, str, str]], n: int = TOP_LIVE) -> tuple[LiveTensor, ...]:
    """The ``n`` largest of (bytes, tensor, made_in) triples as LiveTensors."""
    return tuple(LiveTensor(*t) for t in sorted(blocks, key=lambda t: -t[0])[:n])
