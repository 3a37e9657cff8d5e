"""Calibrate an estimate's overhead on one GPU model from a real run there.

``--sdmem-estimate`` predicts ``max_memory_allocated``: what the tensors need. A card's reserved
memory and its process footprint hold more, and that part the simulation cannot see: the
caching allocator's slack on that card, cuBLAS/cuDNN workspaces, the CUDA context and the
loaded kernels. So that term is measured instead: the tests of a real GPU run (``--gpu
--sdmem-json``) are paired with their estimates (``--sdmem-estimate --sdmem-json``, same
tests), and per metric the overhead is the largest excess of the measured figure over the
estimated reserved memory. It is written as an ``[overhead."GPU NAME"]`` table for the budgets
file (``budgets.Overhead``), with each pair's figures in its comments, so the figure can be
traced to the run it came from.

A pair is only used when its allocated figures agree within the estimator's stated accuracy
(``AGREEMENT``): a larger gap is a different generation or a wrong estimate, and folding it into
the overhead would hide it behind a bigger constant.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pytest_sdmem.base.atomic import write_atomic
from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.baseline import load_results
from pytest_sdmem.gate.budgets import (
    OVERHEAD_METRICS,
    BudgetError,
    parse_budgets,
    read_budgets_text,
)
from pytest_sdmem.gate.results import RunResults, TestRecord

#: How far an estimate's allocated figure may be from the measured one for the pair to count.
AGREEMENT = 0.10

_MIB = 1024**2


class CalibrationError(ValueError):
    """The two runs cannot calibrate an overhead; the message says why."""


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped
    (JSON's escapes are not TOML's: it has no surrogate pairs)."""
    if any(0xD800 <= ord(ch) < 0xE000 for ch in text):
        raise CalibrationError(f"{text!r} is not valid text (a lone surrogate): not a GPU name")
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def _is_control(ch: str) -> bool:
    """A character TOML allows neither raw in a string nor in a comment."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


def _escape(ch: str) -> str:
    if ch in '"\\':
        return "\\" + ch
    return f"\\u{ord(ch):04x}" if _is_control(ch) else ch


def _comment(text: str) -> str:
    """``text`` safe inside a TOML comment: one line, no control characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(" " if _is_control(ch) else ch for ch in text)


@dataclass(frozen=True)
class Pair:
    """One test, measured on the GPU and estimated without it (bytes)."""

    nodeid: str
    measured_allocated: int
    measured_reserved: int
    measured_process: int | None
    estimated_allocated: int
    estimated_reserved: int

    @property
    def allocated_error(self) -> float:
        """estimate / measured - 1 of the allocated peak."""
        return self.estimated_allocated / self.measured_allocated - 1

    def excess(self, metric: str) -> int | None:
        """How far the measured ``metric`` lies above the estimated reserved memory."""
        measured = self.measured_reserved if metric == "reserved" else self.measured_process
        return None if measured is None else measured - self.estimated_reserved


@dataclass
class Calibration:
    """The overhead of ``device_name``: the pairs it rests on and the tests left out (why)."""

    device_name: str
    source: str
    pairs: list[Pair]
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def excesses(self, metric: str) -> list[int]:
        """Each pair's excess of ``metric`` over the estimated reserved memory, where measured."""
        return [e for pair in self.pairs if (e := pair.excess(metric)) is not None]

    def overhead(self, metric: str) -> int | None:
        """The largest excess over the pairs, never below zero; None when no pair has the
        figure (``process`` needs NVML on the GPU run)."""
        excesses = self.excesses(metric)
        return max(0, *excesses) if excesses else None

    def to_toml(self) -> str:
        """An ``[overhead."GPU NAME"]`` table for the budgets file, its evidence in comments.

        Figures are rounded up to the MiB, so the stored overhead is never below the measured.
        """
        lines = [
            f"# Calibrated by sdmem calibrate from {_comment(self.source)}.",
            "# overhead = max over the pairs of (measured figure - estimated reserved), >= 0.",
            "# test: allocated measured / estimated (error); reserved measured / estimated; "
            "process measured",
        ]
        for pair in self.pairs:
            process = format_size(pair.measured_process) if pair.measured_process else "-"
            lines.append(
                f"#   {_comment(pair.nodeid)}: {format_size(pair.measured_allocated)} / "
                f"{format_size(pair.estimated_allocated)} ({pair.allocated_error:+.1%}); "
                f"{format_size(pair.measured_reserved)} / {format_size(pair.estimated_reserved)}"
                f"; {process}")
        lines += [f"#   left out: {_comment(nodeid)}: {_comment(why)}"
                  for nodeid, why in self.excluded]
        lines.append(f"[overhead.{_toml_string(self.device_name)}]")
        for metric in OVERHEAD_METRICS:
            value = self.overhead(metric)
            if value is None:
                lines.append(f"# {metric}: not measured (the GPU run has no process figures: "
                             "it needs nvidia-ml-py, pip install pytest-sdmem[nvml])")
            else:
                mib = math.ceil(value / _MIB)
                median = statistics.median(self.excesses(metric))
                lines.append(f"{metric} = {_toml_string(f'{mib} MiB') if mib else 0}"
                             f"  # median excess {format_size(median)}")
        lines.append(f"calibrated = {_toml_string(f'sdmem calibrate, {self.source}')}")
        return "\n".join(lines) + "\n"


def _by_nodeid(records: list[TestRecord], what: str) -> dict[str, TestRecord]:
    """Records by test id; a test listed twice (a hand-merged file) is refused: which of its
    figures would count is a guess."""
    by_nodeid: dict[str, TestRecord] = {}
    for record in records:
        if record.nodeid in by_nodeid:
            raise CalibrationError(f"{what} lists {record.nodeid!r} twice: calibrate from the "
                                   "results file of one run")
        by_nodeid[record.nodeid] = record
    return by_nodeid


def _gpu_device_name(run: RunResults, what: str) -> str:
    names = {r.device_name for r in run.results if r.device.startswith("cuda") and not r.estimated}
    if not names:
        raise CalibrationError(f"{what} has no test measured on CUDA: calibrate from a run with "
                               "--gpu --sdmem-json (e.g. scripts/gpu_acceptance.sh)")
    if len(names) > 1:
        raise CalibrationError(f"{what} mixes GPU models ({', '.join(sorted(names))}): an "
                               "overhead belongs to one; calibrate from one card's run")
    return names.pop()


def _pair(gpu: TestRecord, estimate: TestRecord) -> Pair | str:
    """The pair of two records of one test, or why it cannot be used."""
    memory, estimated = gpu.memory or {}, estimate.memory or {}
    # The estimate run's memory figures are the highest of the test's generations, as the GPU
    # run's are; an overhead that run already applied comes off again.
    applied = ((estimate.estimate or {}).get("overhead") or {}).get("reserved_bytes") or 0
    if gpu.outcome not in ("passed", "failed"):
        return f"the GPU run's test ended {gpu.outcome!r}"
    if memory.get("num_ooms"):
        return "the GPU run's test ran out of memory: its peak is not the generation's"
    if gpu.technique != estimate.technique:
        return f"technique {gpu.technique!r} on the GPU, {estimate.technique!r} estimated"
    try:
        pair = Pair(gpu.nodeid, int(memory["peak_allocated_bytes"]),
                    int(memory["peak_reserved_bytes"]),
                    None if memory.get("process_peak_bytes") is None
                    else int(memory["process_peak_bytes"]),
                    int(estimated["peak_allocated_bytes"]),
                    int(estimated["peak_reserved_bytes"]) - int(applied))
    except (KeyError, TypeError, ValueError, OverflowError):
        return "a figure is missing from one of the records"
    if pair.measured_allocated <= 0:
        return "the GPU run measured no allocation"
    if abs(pair.allocated_error) > AGREEMENT:
        return (f"the estimate is {pair.allocated_error:+.1%} off the measured allocated peak "
                f"(more than {AGREEMENT:.0%}): a different generation or a wrong estimate, "
                "which an overhead must not absorb")
    return pair


def calibrate(gpu_run: RunResults, estimate_run: RunResults,
              gpu_label: str = "the GPU run", estimate_label: str = "the estimate run"
              ) -> Calibration:
    """Pair the tests of a real GPU run with their estimates and take the overhead per metric."""
    device_name = _gpu_device_name(gpu_run, gpu_label)
    measured = _by_nodeid(gpu_run.results, gpu_label)
    estimates = {nodeid: r for nodeid, r in _by_nodeid(estimate_run.results, estimate_label).items()
                 if r.estimated and r.estimate}
    if not estimates:
        raise CalibrationError(f"{estimate_label} has no estimated test: run the same tests "
                               "with --sdmem-estimate --sdmem-json")
    pairs: list[Pair] = []
    excluded: list[tuple[str, str]] = []
    for gpu in measured.values():
        if gpu.nodeid not in estimates or not gpu.memory or gpu.estimated:
            continue
        pair = _pair(gpu, estimates[gpu.nodeid])
        if isinstance(pair, Pair):
            pairs.append(pair)
        else:
            excluded.append((gpu.nodeid, pair))
    if not pairs:
        why = "; ".join(f"{n}: {w}" for n, w in excluded) or "no test is in both runs"
        raise CalibrationError(f"no test of {gpu_label} pairs with an estimate in "
                               f"{estimate_label} ({why})")
    env = gpu_run.environment
    source = (f"{len(pairs)} tests of {gpu_label} on {device_name}, torch {env.get('torch')}, "
              f"driver {env.get('driver_version') or 'unknown'}")
    return Calibration(device_name, source, pairs, excluded)


def append_to_budgets(path: Path, calibration: Calibration) -> None:
    """Append the overhead table to the budgets file ``path``, keeping everything in it.

    Refused when the file already has an overhead for that GPU (replace it by hand: the old
    figure is someone's record) or is not writable. The new content is validated before it is
    written, and written atomically with the file's mode: the file is either the old one or the
    old one plus a valid table. A symbolic link stays one: its target is what changes.
    """
    path = path.resolve()
    old = read_budgets_text(path)
    if parse_budgets(old, path).overhead(calibration.device_name) is not None:
        raise CalibrationError(f"{path} already has an overhead for {calibration.device_name!r};"
                               " remove that table first to replace it")
    if not os.access(path, os.W_OK):
        raise CalibrationError(f"{path} is not writable: the table was not appended")
    text = old.rstrip("\n") + "\n\n" + calibration.to_toml()
    try:
        parse_budgets(text, path)
    except BudgetError as exc:
        raise CalibrationError(f"{path} plus the new table would not be a valid budgets file, "
                               f"so nothing was written: {exc}") from None
    try:
        write_atomic(path, text, mode=path.stat().st_mode & 0o7777)
    except OSError as exc:
        raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from exc


def calibrate_files(gpu_path: Path, estimate_path: Path) -> Calibration:
    """``calibrate`` over two results files (read with the reports' validation)."""
    return calibrate(load_results(gpu_path, "GPU run"), load_results(estimate_path, "estimate run"),
                     gpu_label=gpu_path.name, estimate_label=estimate_path.name)

