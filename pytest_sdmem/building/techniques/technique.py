"""What one technique is: when it is applied (:class:`Stage`), how far its images may drift
(:class:`OutputTolerance` and its tiers), what it cannot be combined with (:class:`Conflict`),
the model families it applies to (:class:`Families`), its optional argument
(:class:`Parameter`), how the estimator treats it (:class:`Estimation`), and the
:class:`Technique` entry that holds them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, NamedTuple

import torch

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.building.techniques.context import Apply


class Stage(IntEnum):
    """When a technique is applied relative to moving the pipeline to its device.

    ``CONFIGURE`` changes the models in place and does not care where they are. ``PLACE`` is the
    offload modes, which decide placement themselves: the pipeline must *not* be moved to CUDA
    before them (diffusers issue 1934: sequential offload after ``.to("cuda")`` saved almost
    nothing), so a set with one of them is never moved. ``WRAP`` replaces or compiles the UNet's
    forward and must see the final weights, dtype and device.
    """

    CONFIGURE = 1
    PLACE = 2
    WRAP = 3


class OutputTolerance(NamedTuple):
    """How far a technique's images may be from its baseline's, in [0, 1] image space.

    Both bounds must hold. The mean catches a wrong picture (a broken offload gives noise, a mean
    difference of tenths); the max bounds local damage such as a seam between VAE tiles.
    """

    max_abs: float
    mean_abs: float

    def loosest(self, other: OutputTolerance) -> OutputTolerance:
        """The tolerance that allows what either allows: a set is as loose as its loosest part."""
        return OutputTolerance(max(self.max_abs, other.max_abs),
                               max(self.mean_abs, other.mean_abs))


# Tolerance tiers. On the tiny pipeline (CPU, 64x64, 2 and 10 steps) same-math techniques differ
# from ``none`` by < 1e-5 and the others by the figures in the comments; the tiers leave wide
# headroom for SD 1.5 over 50 steps on CUDA, where they are not calibrated yet, and stay well
# below a wrong image (noise or a broken offload: mean differences of tenths).
#: Same kernels, same order: only nondeterminism of the device can differ.
SAME_MATH = OutputTolerance(max_abs=2e-3, mean_abs=2e-4)
#: Same math, other kernels or summation order (sliced, fused, traced, compiled attention).
REORDERED = OutputTolerance(max_abs=2e-2, mean_abs=2e-3)
#: fp16 weights and activations (tiny: max 4.0e-3, mean 6.3e-4).
HALF = OutputTolerance(max_abs=0.3, mean_abs=0.03)
#: bf16: 3 fewer mantissa bits than fp16 (tiny: max 3.0e-2, mean 4.6e-3).
BFLOAT = OutputTolerance(max_abs=0.4, mean_abs=0.05)
#: fp8 e4m3 weight storage (tiny: max 6.0e-2, mean 1.0e-2).
FP8_STORAGE = OutputTolerance(max_abs=0.5, mean_abs=0.08)
#: Tiles decoded apart and blended, so tone may change between tiles (tiny at 96x96: max 4.7e-2,
#: mean 4.9e-3; at 128x128: max 0.11, mean 8.6e-3).
TILED = OutputTolerance(max_abs=0.35, mean_abs=0.04)


@dataclass(frozen=True)
class Conflict:
    """``other`` cannot be combined with the technique that declares this; ``reason`` says why.

    Declared on one side only; :func:`parse_technique` checks both directions.
    """

    other: str
    reason: str


#: The model families of the catalogue, in its order (``pipelines.FAMILIES``, which this room
#: cannot import: pipelines and techniques are sibling rooms; a test keeps the two equal).
FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux")


@dataclass(frozen=True)
class Families:
    """The model families a technique applies to: every family but those in ``refused``, each
    with the reason it cannot apply there.

    A technique applied to a family it refuses would fail deep inside diffusers or, worse, do
    nothing (a UNet-side switch on a transformer model): the plugin skips such a test at
    collection with the reason, or fails it when a marker asked for the technique by name.
    """

    refused: tuple[tuple[str, str], ...] = ()

    @classmethod
    def refusing(cls, reasons: dict[str, str]) -> Families:
        """Refuse each family of ``reasons`` (family -> why), in the catalogue's order."""
        unknown = sorted(set(reasons) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown families {unknown}: expected some of {FAMILIES}")
        return cls(tuple((family, reasons[family]) for family in FAMILIES if family in reasons))

    def reason(self, family: str) -> str | None:
        """Why the technique cannot apply to ``family``; None when it can."""
        return dict(self.refused).get(family)

    @property
    def applies_to(self) -> tuple[str, ...]:
        """The families the technique applies to, in the catalogue's order."""
        return tuple(f for f in FAMILIES if self.reason(f) is None)


#: A technique of every family.
ALL_FAMILIES = Families()


@dataclass(frozen=True)
class Parameter:
    """The optional argument of a technique, written ``name(arg)``.

    ``parse`` turns the text into a canonical value or raises ValueError; ``make`` gives the apply
    function for a value. The bare name means ``default``.
    """

    accepted: str
    parse: Callable[[str], Any]
    make: Callable[[Any], Apply]
    default: Any


@dataclass(frozen=True)
class Estimation:
    """How ``--sdmem-estimate`` (``estimate.run``) treats a technique.

    ``refused`` is None when the estimator reproduces the technique's effect on meta tensors
    (its configuration applied for real, or its placement modelled), else why it cannot follow
    it: the reason the estimate is refused with.
    """

    refused: str | None = None


#: The estimator reproduces the technique.
ESTIMATED = Estimation()
#: The default of an entry: a technique added to the registry is refused until the estimator
#: models it, rather than estimated as if it were absent.
NOT_ESTIMATED = Estimation(refused="the estimator has no model of this technique")


@dataclass(frozen=True)
class Technique:
    """One technique: how to switch it on, what it needs and what it claims.

    ``order`` is its place in the canonical order (unique, increasing with ``stage``);
    ``dtype`` is the load dtype it implies (None: no opinion); ``sets_attention`` marks the
    techniques that choose the attention processor, so the classic one is not installed;
    ``probe(device)`` returns a reason when a requirement that is not a package, a CUDA device
    or a torch version is missing (a C++ compiler for ``compile``); ``families`` says which model
    families it applies to and why not the others; ``estimation`` says whether
    ``--sdmem-estimate`` can follow it.
    """

    name: str
    summary: str
    claim: str
    order: int
    stage: Stage
    apply: Apply
    requires_cuda: bool = False
    requires_packages: tuple[str, ...] = ()
    min_torch: str | None = None
    conflicts: tuple[Conflict, ...] = ()
    dtype: torch.dtype | None = None
    output_tolerance: OutputTolerance = SAME_MATH
    notes: str = ""
    sets_attention: bool = False
    probe: Callable[[str], str | None] | None = None
    parameter: Parameter | None = None
    families: Families = ALL_FAMILIES
    estimation: Estimation = NOT_ESTIMATED

    @property
    def key(self) -> str:
        """The registry name: ``attention_slicing`` for ``attention_slicing(1)``."""
        return self.name.partition("(")[0]

    def bind(self, text: str) -> Technique:
        """This technique with the argument ``text`` (the ``1`` of ``attention_slicing(1)``).

        The canonical value names the result, so ``attention_slicing(max)`` and
        ``attention_slicing(1)`` are one technique, and the default is the bare name.
        """
        if self.parameter is None:
            raise TechniqueError(f"{self.name} takes no argument, got {self.name}({text})")
        try:
            value = self.parameter.parse(text.strip())
        except ValueError:
            raise TechniqueError(
                f"invalid argument {text.strip()!r} of {self.name}: expected "
                f"{self.parameter.accepted}"
            ) from None
        if value == self.parameter.default:
            return self
        return replace(self, name=f"{self.name}({value})", apply=self.parameter.make(value))

