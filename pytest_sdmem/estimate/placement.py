"""Where a pipeline's weights are while it runs: the placement of each offload mode, observed.

The offload techniques need CUDA (they move weights between the CPU and the device), so the
estimator does not run them; it runs the pipeline with every weight on meta and lets a
placement policy say which weights are on the simulated GPU at each moment. The policies are
not tables per technique: they hang on the same events as the real hooks (a module's forward
starting and ending, a model being entered) and do what the real hook does at that event,
so the residency follows the code that actually runs.

* :class:`Resident` (every technique without offload): all weights on the device, allocated
  in the order ``pipe.to("cuda")`` allocates them (``Module._apply``: children first, then
  the module's own parameters and buffers).
* :class:`ModelOffload` (``enable_model_cpu_offload``, accelerate's ``CpuOffload`` hooks):
  a model is copied to the device when it is entered (its forward, or ``apply_forward_hook``
  methods such as ``AutoencoderKL.decode``); the model before it in the pipeline's
  ``model_cpu_offload_seq`` is sent back first, followed by ``clear_device_cache``. A model stays
  on the device until then, or until the end of the call. Models in
  ``_exclude_from_cpu_offload`` (SD's safety checker) stay on the device all along.
* :class:`SequentialOffload` (``enable_sequential_cpu_offload``, accelerate's
  ``AlignDevicesHook``): every module with parameters of its own gets them on the device for
  its forward only; buffers stay on the device unless the model has parameters of its own
  (``offload_buffers``); excluded models stay on the device.
* :class:`GroupOffload` (diffusers' leaf-level group offloading): each Conv/Linear/Embedding
  layer is a group, the parameters and buffers outside them form one group per owning module;
  a group is on the device for its leader's forward. With CUDA streams the first forward of
  each model records the order of the groups, and from then on each group prefetches the next
  one (two groups on the device at once) through a second stream, whose cached blocks the
  compute stream cannot reuse.

A pipeline may convert an offloaded model while it runs (SDXL's ``force_upcast`` VAE:
``vae.to(torch.float32)`` before the decode and back to float16 after it): the conversion of
weights that live on the CPU happens on the CPU, so the policies that keep weights there
(``convert_on_host``) make the converted copies host-resident too; the device copy made when
the model is next onloaded then has the new dtype's size.

Layerwise casting needs no policy: its hooks run for real on meta (the weights are stored in
float8 and each layer's compute-dtype copy exists during its forward, as on CUDA).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from pytest_sdmem.estimate.allocator import Block
from pytest_sdmem.estimate.device import SimulatedDevice

#: The layer types diffusers' leaf-level group offloading makes groups of
#: (``hooks._common._GO_LC_SUPPORTED_PYTORCH_LAYERS``).
GROUP_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
    torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d,
    torch.nn.Linear, torch.nn.Embedding,
)
#: Stream of the allocations group offloading makes for its transfers (the compute stream is 0).
TRANSFER_STREAM = 1


@dataclass(frozen=True)
class Models:
    """A pipeline's models as the offload modes see them: in component order, with the
    model offload chain and the models excluded from offloading."""

    models: dict[str, torch.nn.Module]
    offload_seq: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, pipe: Any) -> Models:
        """The models of a diffusers pipeline (``components``, ``model_cpu_offload_seq``,
        ``_exclude_from_cpu_offload``)."""
        models = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        seq = tuple(filter(None, (pipe.model_cpu_offload_seq or "").split("->")))
        return cls(models, seq, tuple(pipe._exclude_from_cpu_offload))


def apply_order(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """The parameters and buffers of ``module`` in the order ``module.to(device)`` copies them
    (``Module._apply``: children first, then own parameters, then own buffers), each once."""
    seen: set[int] = set()

    def walk(m: torch.nn.Module) -> Iterator[torch.Tensor]:
        for child in m.children():
            yield from walk(child)
        for tensor in (*m._parameters.values(), *m._buffers.values()):
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor

    return walk(module)


class _EntryHook:
    """Stands in for accelerate's hook object on a model, so that diffusers'
    ``apply_forward_hook`` methods (``encode``/``decode``) report the model's entry too."""

    def __init__(self, entered: Callable[[], None]) -> None:
        self._entered = entered

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple:
        self._entered()
        return args, kwargs


class ModelEntries:
    """Calls ``listener(name)`` whenever one of ``models`` is entered: its forward, or a method
    decorated with diffusers' ``apply_forward_hook``. Use as a context manager."""

    def __init__(self, models: Models, listeners: list[Callable[[str], None]]) -> None:
        self._models = models
        self._listeners = listeners
        self._handles: list[Any] = []

    def __enter__(self) -> ModelEntries:
        for name, model in self._models.models.items():
            if hasattr(model, "_hf_hook"):
                raise RuntimeError(f"{name} already has accelerate hooks: the estimator runs a "
                                   "pipeline without offload hooks and models them itself")
        for name, model in self._models.models.items():
            entered = self._notifier(name)
            self._handles.append(model.register_forward_pre_hook(lambda m, a, e=entered: e()))
            model._hf_hook = _EntryHook(entered)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        for model in self._models.models.values():
            if isinstance(getattr(model, "_hf_hook", None), _EntryHook):
                del model._hf_hook

    def _notifier(self, name: str) -> Callable[[], None]:
        def entered() -> None:
            for listener in self._listeners:
                listener(name)
        return entered


class Placement:
    """Base policy: the hooks it installs are removed by ``detach``."""

    description = ""

    def __init__(self) -> None:
        self.device: SimulatedDevice | None = None
        self._handles: list[Any] = []

    def attach(self, models: Models, device: SimulatedDevice) -> None:
        """Put the weights where the offload mode puts them at setup, and install the hooks."""
        raise NotImplementedError

    def enter_model(self, name: str) -> None:
        """A model of the pipeline is being entered (see ``ModelEntries``)."""

    def finish(self) -> None:
        """The pipeline call ended (``maybe_free_model_hooks``)."""

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def convert_on_host(self, model: torch.nn.Module) -> None:
        """Make ``model.to(...)`` and its like (``Module._apply``) convert the tensors that live
        on the host on the host: their converted copies are not device allocations. Tensors
        on the device are converted there, as before."""
        device = self.device
        assert device is not None
        apply = model._apply

        def on_host_apply(fn: Callable[[torch.Tensor], torch.Tensor], *args: Any,
                          **kwargs: Any) -> torch.nn.Module:
            def convert(tensor: torch.Tensor) -> torch.Tensor:
                if not device.is_on_host(tensor):
                    return fn(tensor)
                with device.on_host():
                    return fn(tensor)
            return apply(convert, *args, **kwargs)

        model._apply = on_host_apply  # type: ignore[method-assign]
        self._handles.append(_InstanceAttribute(model, "_apply"))

    def _hook(self, module: torch.nn.Module, before: Callable[[], None],
              after: Callable[[], None]) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda m, a: before()))
        self._handles.append(module.register_forward_hook(lambda m, a, o: after()))


@dataclass(frozen=True)
class _InstanceAttribute:
    """A handle that removes an attribute set on one object (``remove``, like a hook's)."""

    owner: object
    name: str

    def remove(self) -> None:
        self.owner.__dict__.pop(self.name, None)


class Resident(Placement):
    """Everything on the device from the start (``pipe.to("cuda")``)."""

    description = "all weights on the device"

    def attach(self, models: Models, device: SimulatedDevice) -> None:
        self.device = device
        for model in models.models.values():
            device.place(apply_order(model))


class ModelOffload(Placement):
    """accelerate's ``CpuOffload`` chain, as ``enable_model_cpu_offload`` sets it up."""

    description = ("whole models on the device from their first use until the next model in "
                   "the offload chain starts; excluded models always")

    def __init__(self) -> None:
        super().__init__()
        self._models: Models | None = None
        self._previous: dict[str, str] = {}
        self._on_device: dict[str, list[Block | None]] = {}

    def attach(self, models: Models, device: SimulatedDevice) -> None:
        self.device, self._models = device, models
        chain = [name for name in models.offload_seq if name in models.models]
        self._previous = {b: a for a, b in pairwise(chain)}
        for name, model in models.models.items():
            if name not in models.exclude:
                device.keep_on_host(apply_order(model))
                self.convert_on_host(model)
        for name, model in models.models.items():
            if name in models.exclude:
                device.place(apply_order(model))

    def enter_model(self, name: str) -> None:
        assert self.device is not None and self._models is not None
        if name in self._models.exclude or name not in self._models.models:
            return
        previous = self._previous.get(name)
        if previous in self._on_device:
            self._offload(previous)
            gc.collect()  # accelerate's clear_device_cache()
            self.device.empty_cache()
        if name not in self._on_device:
            model = self._models.models[name]
            self._on_device[name] = [self.device.copy_in(t) for t in apply_order(model)]

    def finish(self) -> None:
        assert self.device is not None
        for name in list(self._on_device):
            self._offload(name)
        self.device.empty_cache()

    def _offload(self, name: str) -> None:
        assert self.device is not None
        for block in self._on_device.pop(name):
            self.device.release(block)


class SequentialOffload(Placement):
    """accelerate's ``AlignDevicesHook`` on every module with tensors of its own, as
    ``enable_sequential_cpu_offload`` (``cpu_offload``) sets it up."""

    description = "each module's own parameters on the device during its forward only"

    def attach(self, models: Models, device: SimulatedDevice) -> None:
        self.device = device
        for name, model in models.models.items():
            if name in models.exclude:
                device.place(apply_order(model))
                continue
            offload_buffers = len(model._parameters) > 0  # diffusers' choice per model
            for module in model.modules():
                persistent = [b for n, b in module._buffers.items()
                              if b is not None and n not in module._non_persistent_buffers_set]
                moved = [p for p in module._parameters.values() if p is not None]
                if offload_buffers:
                    moved += persistent
                staying = [b for b in module._buffers.values()
                           if b is not None and not any(b is m for m in moved)]
                device.keep_on_host(moved)
                device.place(staying)
                if moved:
                    self._onload_during_forward(module, moved)
            self.convert_on_host(model)

    def _onload_during_forward(self, module: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
        device = self.device
        assert device is not None
        blocks: list[Block | None] = []

        def onload() -> None:
            blocks.extend(device.copy_in(t) for t in tensors)

        def offload() -> None:
            for block in blocks:
                device.release(block)
            blocks.clear()

        self._hook(module, onload, offload)


@dataclass(eq=False)
class _Group:
    """One offloading group: its tensors, their device copies while onloaded, and the
    prefetch state diffusers keeps on the group (``onload_self``, the hook's ``next_group``)."""

    tensors: list[torch.Tensor]
    stream: int
    blocks: list[Block | None] | None = None
    onload_self: bool = True
    next: _Group | None = None


@dataclass(eq=False)
class _ModelGroups:
    """The groups of one model and the first-forward recording of their execution order."""

    root: _Group
    order: list[_Group] | None


class GroupOffload(Placement):
    """diffusers' ``apply_group_offloading(offload_type="leaf_level")``, with or without
    streams."""

    def __init__(self, use_stream: bool = True) -> None:
        super().__init__()
        self.use_stream = use_stream
        self.description = ("each layer's weights on the device during its forward"
                            + (", the next layer's prefetched on a transfer stream"
                               if use_stream else ""))

    def attach(self, models: Models, device: SimulatedDevice) -> None:
        self.device = device
        stream = TRANSFER_STREAM if self.use_stream else 0
        for model in models.models.values():
            device.keep_on_host(apply_order(model))
            self.convert_on_host(model)
            leaders = self._groups(model, stream)
            root_group = leaders.pop(model, None) or _Group([], 0)
            # Without streams there is no prefetching, so no execution order is recorded.
            state = _ModelGroups(root_group, [] if self.use_stream else None)
            for module, group in leaders.items():
                self._hook(module, self._before(group, state), self._after(group))
            self._hook(model, self._before(root_group, state, root=True),
                       self._after(root_group, state))

    @staticmethod
    def _groups(model: torch.nn.Module, stream: int) -> dict[torch.nn.Module, _Group]:
        """Leaf layers as groups, then one group per module owning tensors outside them."""
        groups: dict[torch.nn.Module, _Group] = {}
        leaf_names = set()
        for name, module in model.named_modules():
            if isinstance(module, GROUP_LAYERS):
                groups[module] = _Group([*module.parameters(), *module.buffers()], stream)
                leaf_names.add(name)
        owners = dict(model.named_modules())
        rest: dict[torch.nn.Module, list[torch.Tensor]] = {}
        for kind in (model.named_parameters, model.named_buffers):
            for name, tensor in kind():
                atoms = name.split(".")
                prefixes = [".".join(atoms[:i]) for i in range(len(atoms) - 1, 0, -1)]
                if any(p in leaf_names for p in prefixes):
                    continue
                owner = next((owners[p] for p in prefixes if p in owners), model)
                rest.setdefault(owner, []).append(tensor)
        for owner, tensors in rest.items():
            groups.setdefault(owner, _Group(tensors, stream))
        return groups

    def _before(self, group: _Group, state: _ModelGroups,
                root: bool = False) -> Callable[[], None]:
        def pre_forward() -> None:
            if not root and state.order is not None:
                state.order.append(group)  # LayerExecutionTrackerHook
            if group.onload_self or group.blocks is None:
                self._onload(group)
            if group.next is not None and not group.next.onload_self:
                self._onload(group.next)
        return pre_forward

    def _after(self, group: _Group, state: _ModelGroups | None = None) -> Callable[[], None]:
        def post_forward() -> None:
            self._offload(group)
            if state is not None and state.order is not None:  # LazyPrefetchGroupOffloadingHook
                chain = [state.root, *state.order]
                for current, following in pairwise(chain):
                    current.next = following
                    following.onload_self = False
                state.order = None
        return post_forward

    def _onload(self, group: _Group) -> None:
        """``tensor.data = source.to(device)`` per tensor: a copy already there is replaced."""
        device = self.device
        assert device is not None
        old = group.blocks or [None] * len(group.tensors)
        group.blocks = []
        for tensor, previous in zip(group.tensors, old, strict=True):
            group.blocks.append(device.copy_in(tensor, group.stream))
            device.release(previous)

    def _offload(self, group: _Group) -> None:
        device = self.device
        assert device is not None
        for block in group.blocks or ():
            device.release(block)
        group.blocks = None
