"""Expressions into sets: :func:`parse_technique` turns ``"fp16+vae_slicing"`` into a
:class:`TechniqueSet` in canonical order, refusing unknown names, duplicates and combinations
that cannot work (the entries' conflicts, both directions)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import torch

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.building.techniques.registry import PRESETS, REGISTRY
from pytest_sdmem.building.techniques.technique import OutputTolerance, Technique


@dataclass(frozen=True)
class TechniqueSet:
    """A parsed combination of techniques, in canonical order.

    Equal sets compare equal whatever was written; ``preset`` only names the set when it was
    written as exactly one preset, so that ``expr`` (and test ids and result rows) read
    ``seed:traced_unet`` rather than its expansion.
    """

    techniques: tuple[Technique, ...] = ()
    preset: str | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.techniques)

    @property
    def expr(self) -> str:
        """The canonical expression; :func:`parse_technique` of it gives this set back."""
        return self.preset or "+".join(self.names) or "none"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype to load the pipeline in: fp16/bf16 when chosen, else fp32 (the guide's
        original)."""
        return next((t.dtype for t in self.techniques if t.dtype is not None), torch.float32)

    @property
    def output_tolerance(self) -> OutputTolerance:
        """The loosest tolerance among the techniques (``none``'s for the empty set)."""
        tolerance = REGISTRY["none"].output_tolerance
        for technique in self.techniques:
            tolerance = tolerance.loosest(technique.output_tolerance)
        return tolerance

    def __contains__(self, name: object) -> bool:
        return any(t.key == name for t in self.techniques)

    def __str__(self) -> str:
        return self.expr


_TOKEN_RE = re.compile(r"^([a-z0-9_]+)\s*(?:\((.*)\))?$")


def _known() -> str:
    names = ", ".join(
        f"{t.name}(ARG)" if t.parameter is not None else t.name for t in REGISTRY.values()
    )
    return (f"known techniques: {names}; presets: {', '.join(PRESETS)}; combine with '+', "
            "e.g. 'fp16+vae_slicing'")


def _unknown(token: str, expr: str) -> TechniqueError:
    close = difflib.get_close_matches(token, [*REGISTRY, *PRESETS], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TechniqueError(f"unknown technique {token!r} in {expr!r}{hint}: {_known()}")


def _resolve(token: str, expr: str) -> list[tuple[Technique, str | None]]:
    """The techniques one token stands for, each with the preset it came from."""
    if token in PRESETS:
        return [(REGISTRY[name], token) for name in PRESETS[token].techniques]
    match = _TOKEN_RE.match(token)
    if match is None or match.group(1) not in REGISTRY:
        raise _unknown(token, expr)
    technique = REGISTRY[match.group(1)]
    argument = match.group(2)
    return [(technique if argument is None else technique.bind(argument), None)]


def _conflicts(techniques: tuple[Technique, ...]) -> list[str]:
    found = []
    for i, a in enumerate(techniques):
        for b in techniques[i + 1:]:
            for declared, other in ((a, b), (b, a)):
                for conflict in declared.conflicts:
                    if conflict.other == other.key:
                        found.append(f"{a.name} with {b.name}: {conflict.reason}")
    return found


def parse_technique(expr: str) -> TechniqueSet:
    """Parse ``"fp16+vae_slicing"`` (names and presets joined by '+') into a TechniqueSet.

    Strict, because a misspelt technique must not silently measure another pipeline: names are
    exact (whitespace around them is ignored), ``none`` stands alone, a technique listed twice
    (also through a preset) is an error rather than merged, and a combination that cannot work
    is refused with the reason. The written order does not matter.
    """
    if not isinstance(expr, str):
        raise TechniqueError(f"a technique expression is a string, got {expr!r}: {_known()}")
    tokens = [token.strip() for token in expr.split("+")]
    if tokens == [""]:
        raise TechniqueError(f"empty technique expression: write 'none' for no technique; "
                             f"{_known()}")
    if "" in tokens:
        raise TechniqueError(f"empty technique name in {expr!r}: {_known()}")
    if "none" in tokens:
        if len(tokens) > 1:
            rest = "+".join(t for t in tokens if t != "none") or "none"
            raise TechniqueError(f"'none' means no technique and cannot be combined, in "
                                 f"{expr!r}: write {rest!r}")
        return TechniqueSet()
    chosen: dict[str, tuple[Technique, str | None]] = {}
    for token in tokens:
        for technique, source in _resolve(token, expr):
            if technique.key in chosen:
                first = chosen[technique.key][1]
                via = [f"preset {p}" for p in (first, source) if p is not None]
                raise TechniqueError(
                    f"{technique.key} is listed twice in {expr!r}"
                    f"{' (through ' + ' and '.join(via) + ')' if via else ''}: write it once"
                )
            chosen[technique.key] = (technique, source)
    techniques = tuple(sorted((t for t, _ in chosen.values()), key=lambda t: t.order))
    problems = _conflicts(techniques)
    if problems:
        raise TechniqueError(f"cannot combine {expr!r}: " + "; ".join(problems))
    preset = tokens[0] if len(tokens) == 1 and tokens[0] in PRESETS else None
    return TechniqueSet(techniques, preset)

