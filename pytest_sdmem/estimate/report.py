"""The result of an estimate: what ``torch.cuda.max_memory_allocated`` would say, and how sure.

``estimated_allocated`` is the simulated allocator's peak of allocated bytes over the call,
with the weights on the device counted, as ``max_memory_allocated`` after
``reset_peak_memory_stats`` at the start of the call would report it. Everything the
simulation cannot see is listed in ``not_modelled`` and never folded into the figure: the
caller decides what overhead to add, and to which metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_sdmem.base.units import format_duration, format_size
from pytest_sdmem.building.generation import GenerationArgs
from pytest_sdmem.estimate.peak import PeakPlace
from pytest_sdmem.measuring.memory.tracker import MemoryReport

#: ``MemoryReport.device`` of an estimate.
ESTIMATED_DEVICE = "cuda (estimated)"
ESTIMATED_DEVICE_NAME = "simulated CUDA caching allocator"

#: What counts in ``max_memory_allocated`` on a real GPU but is not in the estimate, and what
#: the estimate assumes. Each entry says which way it moves the real figure.
NOT_MODELLED: tuple[str, ...] = (
    "cuDNN convolution engines are cuDNN's own choice: the workspace is modelled as the "
    "NHWC/KRSC copies of a tensor-core convolution in NCHW (the largest usual choice), so an "
    "engine that needs none makes the real figure lower; with torch.backends.cudnn.benchmark "
    "on, the trials use workspaces up to the free memory: the real figure can be far higher",
    "bf16 convolutions before sm80 (V100, T4): cuDNN does not take them and torch's im2col "
    "fallback allocates a column buffer per image: the real figure is higher",
    "kernel-internal temporaries other than the SDPA kernels' and cuDNN's (e.g. GroupNorm's "
    "per-channel float32 buffers, kilobytes) and flash attention's split-KV accumulators "
    "(short sequences only, megabytes): the real figure is higher only if one is alive at the "
    "peak",
    "the caching allocator runs with default settings (no expandable_segments, "
    "max_split_size_mb or roundup_power2_divisions) and unlimited memory: a GPU that fills up "
    "frees its cache and retries, which changes block reuse, not the bytes alive",
    "the CUDA context, loaded kernels and library handles are outside the allocator: they are "
    "in memory_reserved/nvidia-smi, never in max_memory_allocated",
    "timesteps stay on the host (on the GPU they are one 512-byte block) and tensor values read "
    "back to the host are zeros (the safety checker's verdict only decides whether the host "
    "blanks an image)",
)


@dataclass(frozen=True)
class Overhead:
    """What a real run on ``device_name`` holds beyond an estimate of it, per metric (bytes;
    None: not calibrated), and where the figures came from."""

    device_name: str
    reserved: int | None
    process: int | None
    calibrated: str

    def for_metric(self, metric: str) -> int | None:
        """The bytes to add to the estimated reserved memory for ``metric``; None: unknown.
        Zero for "allocated": that figure is the estimate's own."""
        if metric == "allocated":
            return 0
        return {"reserved": self.reserved, "process": self.process}[metric]

    def to_dict(self) -> dict[str, Any]:
        return {"device_name": self.device_name, "reserved_bytes": self.reserved,
                "process_bytes": self.process, "calibrated": self.calibrated}


@dataclass
class EstimateReport:
    """An estimate of one generation's CUDA memory, made on meta tensors."""

    model: str
    technique: str
    args: GenerationArgs
    steps_estimated: int
    safety_checker: bool
    estimated_allocated: int
    estimated_reserved: int
    start_allocated: int
    end_allocated: int
    tensor_bytes_at_peak: int
    phase_peaks: dict[str, int]
    placement: str
    attention_kernels: dict[str, int]
    seconds: float
    gpu: str
    blas_workspaces: str
    peak_place: PeakPlace | None = None
    not_modelled: tuple[str, ...] = field(default=NOT_MODELLED)

    @property
    def peak_phase(self) -> str:
        """The phase (model that ran last) in which the peak was reached."""
        return max(self.phase_peaks, key=lambda name: self.phase_peaks[name])

    def to_memory_report(self, overhead: Overhead | None = None) -> MemoryReport:
        """The estimate as the figures of a measured block, on the device "cuda (estimated)".

        ``overhead`` (calibrated on the GPU the estimate stands for) is added to the reserved
        figure, and gives the process figure; the allocated figure stays the estimate's own.
        Without a process overhead there is no process figure. Host figures are not those of a
        real run, so they are left out; the estimate has no allocator retries or OOMs.
        """
        extra = overhead.reserved if overhead is not None else None
        process = overhead.process if overhead is not None else None
        return MemoryReport(
            device=ESTIMATED_DEVICE,
            device_name=f"{ESTIMATED_DEVICE_NAME} for {self.gpu}" + (
                f" + overhead of {overhead.device_name}" if overhead is not None else ""),
            peak_allocated=self.estimated_allocated,
            peak_reserved=self.estimated_reserved + (extra or 0),
            start_allocated=self.start_allocated,
            end_allocated=self.end_allocated,
            host_peak_rss=None,
            host_rss_method="not measured (estimate)",
            process_peak=self.estimated_reserved + process if process is not None else None,
            num_alloc_retries=0,
            num_ooms=0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The estimate for JSON, with units in the key names."""
        return {
            "estimated": True,
            "model": self.model,
            "technique": self.technique,
            "generation": asdict(self.args),
            "steps_estimated": self.steps_estimated,
            "safety_checker": self.safety_checker,
            "estimated_allocated_bytes": self.estimated_allocated,
            "estimated_reserved_bytes": self.estimated_reserved,
            "start_allocated_bytes": self.start_allocated,
            "end_allocated_bytes": self.end_allocated,
            "tensor_bytes_at_peak": self.tensor_bytes_at_peak,
            "peak_phase": self.peak_phase,
            "phase_peaks_bytes": dict(self.phase_peaks),
            "placement": self.placement,
            "attention_kernels": dict(self.attention_kernels),
            "gpu": self.gpu,
            "blas_workspaces": self.blas_workspaces,
            "peak_place": self.peak_place.to_dict() if self.peak_place is not None else None,
            "seconds": self.seconds,
            "not_modelled": list(self.not_modelled),
        }

    def __str__(self) -> str:
        phases = ", ".join(f"{name} {format_size(peak)}" for name, peak in self.phase_peaks.items())
        kernels = ", ".join(f"{n} {k}" for k, n in sorted(self.attention_kernels.items()))
        steps = (f"{self.steps_estimated} of {self.args.num_inference_steps} steps"
                 if self.steps_estimated != self.args.num_inference_steps
                 else f"{self.steps_estimated} steps")
        return "\n".join([
            f"{self.model} {self.technique!r}, {self.args.batch_size} image(s) "
            f"{self.args.width}x{self.args.height}, {steps}"
            f"{'' if self.safety_checker else ', no safety checker'}: estimated CUDA peak "
            f"allocated {format_size(self.estimated_allocated)} (in {self.peak_phase}), "
            f"reserved {format_size(self.estimated_reserved)}",
            f"  weights at start {format_size(self.start_allocated)}, end "
            f"{format_size(self.end_allocated)}; tensor bytes at the peak "
            f"{format_size(self.tensor_bytes_at_peak)} before block rounding",
            f"  for {self.gpu}; {self.blas_workspaces}",
            f"  {self.peak_place or 'peak place unknown'}",
            f"  phase peaks: {phases}",
            f"  placement: {self.placement}; SDPA kernels: {kernels or 'none called'}",
            f"  estimated in {format_duration(self.seconds)} on meta tensors; not modelled: "
            + "; ".join(self.not_modelled),
        ])
