"""How this session gets its figures, chosen once at configure: measured on a device, or
estimated without a GPU (``--sdmem-estimate``).

The two differ in a few operations only, and each is a method here: which tests cannot run
(decided at collection), which tests are measured, how ``sd_pipe`` is built, how the call is
run, which figures a budget applies to and how a budget is judged. Everything else in the
plugin is the same for both, so nothing outside this module asks which mode it is in.

Nothing here imports torch at module level: the building and estimating modules are imported
inside the operations that need them, which run only for tests that use the plugin.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest

from pytest_sdmem.base.errors import NeedsRealRun, TechniqueError
from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.settings import Settings
from pytest_sdmem.measuring.memory import MemoryReport, MemoryTracker, TrackerError, get_backend
from pytest_sdmem.measuring.metrics import METRICS, PROCESS
from pytest_sdmem.plugin.state import TestState

if TYPE_CHECKING:
    from pytest_sdmem.building.generation import GenerationArgs
    from pytest_sdmem.building.runner import SdPipe
    from pytest_sdmem.estimate.pipe import EstimatedSdPipe
    from pytest_sdmem.estimate.report import Overhead
    from pytest_sdmem.gate.budgets import Budgets
    from pytest_sdmem.gate.markers import MaxVram, MinSpeedup
    from pytest_sdmem.gate.sections import EstimateSection
    from pytest_sdmem.gate.verdicts import VramVerdict
    from pytest_sdmem.measuring.speedup import SpeedupResult

MIN_SPEEDUP_NEEDS_TIMINGS = "min_speedup needs real timings: skipped with --sdmem-estimate"


@dataclass
class Mode(ABC):
    """What both modes share: the session's settings, and the verdict of a memory budget up
    to the point where they differ (``_judge_budget``)."""

    settings: Settings

    #: Whether the ``gpu`` tier runs and the terminal header shows the GPU's figures.
    gpu_tier: bool = False
    #: Whether the figures are estimates (the record's ``estimated``, the status word's note).
    estimated: bool = False

    def prepare(  # noqa: B027 - optional: a measured session has nothing to check
            self, budgets: Budgets | None, device_name: Callable[[], str]) -> None:
        """Check, once at configure, what this mode needs of the session (usage errors)."""

    def describe(  # noqa: B027 - optional: a measured session's environment says it all
            self, environment: dict[str, Any]) -> None:
        """Add what this mode says about the figures to the session's environment."""

    @abstractmethod
    def skip_reason(self, state: TestState, fixturenames: set[str]) -> str | None:
        """Why this test cannot run in this session, decided at collection (None: it can)."""

    @abstractmethod
    def is_measured(self, state: TestState, fixturenames: set[str]) -> bool:
        """Whether the plugin measures this test (and makes a record of it)."""

    @abstractmethod
    def build_pipe(self, technique: str, defaults: GenerationArgs) -> SdPipe | EstimatedSdPipe:
        """The ``sd_pipe`` handle of a test with ``technique`` (the fixture handles errors)."""

    @abstractmethod
    def run_call(self, item: pytest.Item, state: TestState) -> Generator[None, Any, Any]:
        """The body of the call phase's hook wrapper for a measured test."""

    @abstractmethod
    def budget_report(self, state: TestState) -> MemoryReport | None:
        """The figures a memory budget applies to, or None when there are none."""

    def has_estimates(self, state: TestState) -> bool:
        """Whether the test's figures are estimates of its generations."""
        return False

    def reopen_skipped(  # noqa: B027 - optional: a measured test that skipped stays skipped
            self, state: TestState, rep: pytest.TestReport) -> None:
        """Make the report of a call that skipped (``rep.longrepr`` is the skip's tuple) the
        report of a test to judge, when its budget was checked before the skip."""

    def estimate_section(self, state: TestState) -> EstimateSection | None:
        """The record's ``estimate``: the last generation's estimate, or None."""
        return None

    def judge_vram(self, state: TestState, excinfo: Any) -> VramVerdict | None:
        """The verdict of the test's ``max_vram`` budget, or None without a budget or figures."""
        from pytest_sdmem.gate.verdicts import VramVerdict, is_out_of_memory

        spec = state.max_vram
        report = self.budget_report(state)
        if spec is None or report is None:
            return None
        if excinfo is not None and is_out_of_memory(excinfo.value):
            return VramVerdict(spec, report, oom=str(excinfo.value))
        return self._judge_budget(spec, report)

    @abstractmethod
    def _judge_budget(self, spec: MaxVram, report: MemoryReport) -> VramVerdict:
        """The verdict of a budget on figures that are there and no out-of-memory error."""


def _techniques() -> tuple[Callable[[str], Any], Callable[[Any, str], list[str]]]:
    """``parse_technique`` and ``unmet_requirements``: imports torch, so only for tests that use
    a pipeline (see ``hooks``)."""
    from pytest_sdmem.building.techniques import parse_technique, unmet_requirements

    return parse_technique, unmet_requirements


@dataclass
class Measured(Mode):
    """Figures measured on the session's device (the CPU tier, or a GPU with ``--gpu``)."""

    def skip_reason(self, state: TestState, fixturenames: set[str]) -> str | None:
        if "sd_pipe" not in fixturenames and state.min_speedup is None:
            return None
        parse_technique, unmet_requirements = _techniques()
        if "sd_pipe" in fixturenames:
            ts = parse_technique(state.technique or "none")
            if missing := unmet_requirements(ts, self.settings.device):
                return "; ".join(missing)
        if state.min_speedup is not None:
            baseline = parse_technique(state.min_speedup.baseline)
            if missing := unmet_requirements(baseline, self.settings.device):
                return (f"the min_speedup baseline {baseline.expr!r} cannot run: "
                        + "; ".join(missing))
        return None

    def is_measured(self, state: TestState, fixturenames: set[str]) -> bool:
        return bool(state.max_vram or state.min_speedup
                    or {"sd_pipe", "cuda_mem_tracker"} & fixturenames)

    def build_pipe(self, technique: str, defaults: GenerationArgs) -> SdPipe:
        from pytest_sdmem.building.runner import make_sd_pipe

        s = self.settings
        return make_sd_pipe(s.model, technique, s.device, s.cache_dir, defaults,
                            safety_checker=s.safety_checker)

    def run_call(self, item: pytest.Item, state: TestState) -> Generator[None, Any, Any]:
        settings = self.settings
        tracker = MemoryTracker(get_backend(settings.device))
        try:
            tracker.start()
        except TrackerError as exc:  # it cannot measure here (a thread the CPU counter cannot see)
            pytest.fail(str(exc), pytrace=False)  # the report names the test already
        if settings.snapshot_dir is not None and state.max_vram is not None:
            from pytest_sdmem.measuring.memory.snapshot import SnapshotRecorder

            # Started after the tracker: what setup left alive is "before recording", and the
            # recording's peak is the tracker's. Stopped in makereport, once the verdict is known.
            state.recorder = SnapshotRecorder.for_device(settings.device)
            state.recorder.start()
        try:
            result = yield
        finally:
            # A block the test opened and left open ends with its call and counts like any other
            # (innermost first: the blocks were opened inside the call's window).
            for block in reversed(state.trackers):
                if block.measuring:
                    block.stop()
            state.call_report = tracker.stop()
        if state.min_speedup is not None and state.sd_pipe is not None:
            if state.recorder is not None:  # the timing rounds' baseline is not this test's memory
                vram = self.judge_vram(state, None)
                state.snapshot = state.stop_recording(item.nodeid, settings.snapshot_dir,
                                                      vram is not None and not vram.passed)
            state.speedup = self._time_speedup(state.sd_pipe, state.min_speedup)
        return result

    def _time_speedup(self, pipe: SdPipe | EstimatedSdPipe,
                      spec: MinSpeedup) -> SpeedupResult:
        """The same generation the test ran (or the defaults), outside the memory window."""
        from pytest_sdmem.measuring.timing import TimeBudgetTooShort

        args = asdict(pipe.last_args) if pipe.last_args is not None else {}
        try:
            return pipe.speedup_over(spec.baseline, factor=spec.factor,
                                     max_time=self.settings.max_time, **args)
        except TechniqueError as exc:  # a baseline technique this model cannot take
            failure = f"min_speedup baseline: {exc}"
        except TimeBudgetTooShort as exc:  # a usage problem of the budget: its message
            failure = f"min_speedup against {spec.baseline!r}: {exc}"
        # Failed outside the except: pytest would print the chained error.
        pytest.fail(failure, pytrace=False)

    def budget_report(self, state: TestState) -> MemoryReport | None:
        """The highest tracker block if the test used any (it chose what to measure), else
        its whole call."""
        blocks = [report for tracker in state.trackers for report in tracker.reports]
        if blocks:
            return MemoryReport.merge_max(blocks)
        return state.call_report

    def _judge_budget(self, spec: MaxVram, report: MemoryReport) -> VramVerdict:
        from pytest_sdmem.gate.verdicts import VramVerdict

        if spec.metric == PROCESS.name and PROCESS.value(report) is None:
            return VramVerdict(spec, report, error="the 'process' metric is not available "
                               "here: it needs a CUDA device and nvidia-ml-py (pip install "
                               "pytest-sdmem[nvml])")
        return VramVerdict(spec, report)


@dataclass
class Estimated(Mode):
    """The CUDA peak of ``sd_pipe`` generations estimated on the meta device, standing for the
    GPU named by ``--sdmem-estimate-for`` (its calibrated overhead, when the budgets file has
    one, is added to the reserved and process figures)."""

    overhead: Overhead | None = None

    def prepare(self, budgets: Budgets | None, device_name: Callable[[], str]) -> None:
        if self.settings.estimate_for is not None:
            _check_estimate_for(budgets, self.settings.estimate_for)
        self.overhead = budgets.overhead(device_name()) if budgets is not None else None
        self._check_blas_config()

    def _check_blas_config(self) -> None:
        """The cuBLAS workspace settings every estimate counts: a bad one is a usage error now,
        not the same failure in every estimated test."""
        from pytest_sdmem.estimate.blas import BlasConfigError, blas_workspaces
        from pytest_sdmem.estimate.gpus import gpu_for

        try:
            blas_workspaces(gpu_for(self.settings.estimate_for))
        except BlasConfigError as exc:
            raise pytest.UsageError(f"pytest-sdmem: {exc}") from None

    def describe(self, environment: dict[str, Any]) -> None:
        from pytest_sdmem.estimate.gpus import gpu_for

        environment["estimate_for"] = self.settings.estimate_for
        environment["estimate_gpu"] = gpu_for(self.settings.estimate_for).describe()

    def skip_reason(self, state: TestState, fixturenames: set[str]) -> str | None:
        if "sd_pipe" in fixturenames:
            from pytest_sdmem.estimate import unsupported_reason

            parse_technique, _ = _techniques()
            # The family's refusals were the session's to check (Session.collect).
            reason = unsupported_reason(parse_technique(state.technique or "none"))
            if reason is not None:
                return reason
        if state.min_speedup is not None and state.max_vram is None:
            return MIN_SPEEDUP_NEEDS_TIMINGS
        if "cuda_mem_tracker" in fixturenames:
            return "cuda_mem_tracker blocks measure a real device: skipped with --sdmem-estimate"
        if state.max_vram is not None and "sd_pipe" not in fixturenames:
            return "--sdmem-estimate estimates sd_pipe generations, and this test has none"
        return None

    def is_measured(self, state: TestState, fixturenames: set[str]) -> bool:
        return "sd_pipe" in fixturenames

    def build_pipe(self, technique: str, defaults: GenerationArgs) -> EstimatedSdPipe:
        from pytest_sdmem.building.techniques import parse_technique
        from pytest_sdmem.estimate.pipe import EstimatedSdPipe

        s = self.settings
        return EstimatedSdPipe(s.model, parse_technique(technique), defaults,
                               safety_checker=s.safety_checker, gpu=s.estimate_for)

    def run_call(self, item: pytest.Item, state: TestState) -> Generator[None, Any, Any]:
        try:
            result = yield
        except NeedsRealRun as exc:
            pytest.skip(str(exc))
        if state.min_speedup is not None:
            # Its memory budget was estimated (judged in makereport); its speed cannot be.
            pytest.skip(MIN_SPEEDUP_NEEDS_TIMINGS)
        return result

    @staticmethod
    def estimates(state: TestState) -> list[Any]:
        """The estimates of the test's generations, oldest first."""
        pipe = cast("EstimatedSdPipe | None", state.sd_pipe)  # the only pipes this mode builds
        return pipe.estimates if pipe is not None else []

    def has_estimates(self, state: TestState) -> bool:
        return bool(self.estimates(state))

    def reopen_skipped(self, state: TestState, rep: pytest.TestReport) -> None:
        """A test that went on past its generation (to look at pixels, or to time it) stopped
        with a skip, but its memory budget was checked on the estimate: that check is the
        test's outcome, passed or failed like any budget, and what could not be checked is
        said in a report section. A test without a checked budget stays skipped."""
        if state.max_vram is None or not self.has_estimates(state):
            return
        _, _, reason = rep.longrepr
        rep.sections.append(("sdmem: not checked on the estimate",
                             reason.removeprefix("Skipped: ")))
        rep.outcome = "passed"  # until the budget's verdict, judged as for any test
        rep.longrepr = None

    def budget_report(self, state: TestState) -> MemoryReport | None:
        """The highest estimate, reserved and process with the calibrated overhead of the GPU
        it stands for."""
        estimates = self.estimates(state)
        if not estimates:
            return None
        return MemoryReport.merge_max(e.to_memory_report(self.overhead) for e in estimates)

    def estimate_section(self, state: TestState) -> EstimateSection | None:
        from pytest_sdmem.gate.sections import EstimateSection

        estimates = self.estimates(state)
        if not estimates:
            return None
        return EstimateSection.of(estimates[-1], self.overhead)

    def _judge_budget(self, spec: MaxVram, report: MemoryReport) -> VramVerdict:
        """A reserved or process budget on an estimate: the simulation cannot see what that
        card adds (context, library workspaces, its allocator's slack), so the calibrated
        overhead of the GPU the estimate stands for must be known, and the verdict shows it
        beside the estimate. Without one the budget cannot be checked: an error, never a
        silent pass."""
        from pytest_sdmem.gate.verdicts import VramVerdict, metric_value

        if METRICS[spec.metric].overhead is None:  # the estimate's own figure
            return VramVerdict(spec, report)
        overhead = self.overhead
        extra = overhead.for_metric(spec.metric) if overhead is not None else None
        if overhead is None or extra is None:
            estimate_for = self.settings.estimate_for
            if estimate_for is None:
                where = ("name that GPU with --sdmem-estimate-for, with its "
                         "[overhead.\"GPU NAME\"] table in the budgets file")
            elif overhead is None:
                where = f"the budgets file has no [overhead.{estimate_for!r}] table"
            else:
                where = (f"the budgets file's [overhead.{estimate_for!r}] table has no "
                         f"{spec.metric!r} figure")
            return VramVerdict(spec, report, error=(
                f"an estimate's {spec.metric!r} figure needs the calibrated overhead of the GPU "
                f"it stands for (the CUDA context, cuBLAS/cuDNN workspaces, the allocator's "
                f"slack: what the simulation cannot see); {where}. Calibrate it from a GPU run "
                "with 'sdmem calibrate' (docs/estimates.md: 'Reserved and process budgets on an "
                "estimate'), or budget metric='allocated'"))
        estimate = metric_value(report, spec.metric) - extra
        return VramVerdict(spec, report, note=(
            f"estimated {format_size(estimate)} + overhead {format_size(extra)} of "
            f"{overhead.device_name!r}, calibrated: {overhead.calibrated}"))


def _check_estimate_for(budgets: Budgets | None, name: str) -> None:
    """A GPU name the budgets file does not know would silently change nothing: refuse it."""
    if budgets is None:
        raise pytest.UsageError(
            f"pytest-sdmem: --sdmem-estimate-for={name!r} selects a GPU's budgets and "
            "overhead in the budgets file, but there is none (--sdmem-budgets PATH)")
    if name not in budgets.device_names:
        known = ", ".join(map(repr, budgets.device_names)) or "none"
        raise pytest.UsageError(
            f"pytest-sdmem: --sdmem-estimate-for={name!r}: {budgets.path} has neither "
            f"budgets nor an overhead for that GPU; GPUs it names: {known} (names are "
            "torch.cuda.get_device_name()'s, exactly)")


def choose_mode(settings: Settings) -> Mode:
    """The session's mode: the one decision on ``--sdmem-estimate``. An estimate is of a CUDA
    run, so it runs the GPU tier, as ``--gpu`` does."""
    if settings.estimate:
        return Estimated(settings, gpu_tier=True, estimated=True)
    return Measured(settings, gpu_tier=settings.gpu)
