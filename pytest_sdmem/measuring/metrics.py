"""The memory metrics a ``max_vram`` budget can be about, written once for every user.

A metric is one peak the tracker reports: the marker takes it by ``name``, the tracker's
``MemoryReport`` (and a record's memory section) holds it as ``attribute``, the results file
under ``json_key``, the reports show it as ``label``, and an estimate adds the calibrated
overhead named ``overhead`` to make it. The markers, the verdicts, the reports, the budgets
file's overhead tables and the calibration all read this table instead of naming the figures.
"""

from __future__ import annotations

from dataclasses import dataclass


def bytes_key(attribute: str) -> str:
    """The results file's key of a figure in bytes: its attribute name with the unit."""
    return f"{attribute}_bytes"


@dataclass(frozen=True)
class Metric:
    """One peak a memory budget can hold a test to; see the module docstring."""

    name: str
    attribute: str
    label: str
    description: str
    #: The figure of an estimate's calibrated overhead (``Overhead`` and the budgets file's
    #: ``[overhead."GPU"]`` key) added to the estimated reserved memory to make this metric;
    #: None: the estimate's own figure, nothing added.
    overhead: str | None

    @property
    def json_key(self) -> str:
        return bytes_key(self.attribute)

    def value(self, figures: object) -> int | None:
        """This metric's figure of anything that holds the peaks under their attribute names
        (a ``MemoryReport``, a record's memory section); None: not measured there."""
        value: int | None = getattr(figures, self.attribute)
        return value

    def __str__(self) -> str:
        return self.name


ALLOCATED = Metric("allocated", "peak_allocated", "peak allocated",
                   "peak bytes held by tensors (CUDA: max_memory_allocated)", overhead=None)
RESERVED = Metric("reserved", "peak_reserved", "peak reserved",
                  "peak bytes the caching allocator holds from the driver (what must fit the "
                  "card)", overhead="reserved")
PROCESS = Metric("process", "process_peak", "process peak",
                 "the process's whole device memory as the driver sees it, CUDA context included "
                 "(NVML; needs nvidia-ml-py)", overhead="process")

#: Every metric by the name a marker takes, the default first.
METRICS: dict[str, Metric] = {m.name: m for m in (ALLOCATED, RESERVED, PROCESS)}
DEFAULT_METRIC = ALLOCATED

#: The overhead figures an estimate can add (the budgets file's overhead keys), in table order.
OVERHEAD_FIGURES: tuple[str, ...] = tuple(m.overhead for m in METRICS.values() if m.overhead)
