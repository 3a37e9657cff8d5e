"""pytest hooks only: options, markers, measuring the call phase, verdicts, summary, results.

The measuring is done by the plain-Python core (``memory``, ``timing``, ``runner``, ``gate``);
this module decides *when* to measure (the call phase only, so building a pipeline in a fixture
never counts) and how a verdict shows up in pytest (its own status word, a report section,
JUnit properties, the session table, the results file).

Installing the plugin must cost nothing where it is not used (tests/plugin/test_plugin_tax.py,
benchmarks/plugin_tax.py): at module level this imports only the light modules that register
options, markers and fixtures and parse markers. Whatever imports torch or diffusers
(``techniques``, the memory backends, the environment), and the modules that only judge and
report measured tests (``verdicts``, ``results``, ``report``, ``budgets``, ``gate``), are
imported inside the hook that needs them, which runs only for a test that uses a marker or
fixture of the plugin, or when one of its options is set.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Generator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pytest
from _pytest.skipping import xfailed_key

from pytest_sdmem.base.errors import NeedsRealRun, TechniqueError
from pytest_sdmem.base.units import format_size
from pytest_sdmem.gate.markers import (
    MARKERS,
    MarkerError,
    one_value,
    parse_max_vram,
    parse_min_speedup,
)
from pytest_sdmem.gate.outputs import OutputError, check_locations, session_locations
from pytest_sdmem.gate.settings import Settings, SettingsError, Workers, build_settings
from pytest_sdmem.measuring.memory import MemoryTracker, TrackerError, get_backend
from pytest_sdmem.plugin.fixtures import cuda_mem_tracker, sd_pipe  # noqa: F401 - fixtures of the plugin
from pytest_sdmem.plugin.options import OPTIONS, add_options, default_cache_dir, resolve
from pytest_sdmem.plugin.saving import Outcome, SessionEnd, write_outputs
from pytest_sdmem.plugin.state import (
    SETTINGS,
    STATE,
    Collector,
    TestState,
    marked_technique,
    technique_of,
)

if TYPE_CHECKING:
    from pytest_sdmem.gate.budgets import Budgets
    from pytest_sdmem.gate.judge import Gate
    from pytest_sdmem.gate.markers import BudgetLookup, MaxVram
    from pytest_sdmem.gate.results import RunResults, TestRecord
    from pytest_sdmem.gate.verdicts import Verdict, VramVerdict
    from pytest_sdmem.measuring.memory import MemoryBackend, MemoryReport
    from pytest_sdmem.measuring.memory.cuda import MachineCheck

MIN_SPEEDUP_NEEDS_TIMINGS = "min_speedup needs real timings: skipped with --sdmem-estimate"
SESSION = pytest.StashKey["SessionHooks"]()


class SdmemLeakWarning(UserWarning):
    """A measured test left device memory behind, which would inflate later tests' peaks."""


class SdmemBaselineWarning(UserWarning):
    """Part of the baseline could not be compared (another card, another model)."""


class SdmemMachineWarning(UserWarning):
    """The GPU is not the session's alone, or that could not be checked."""


def runs_tests(workers: Workers) -> bool:
    """Whether this process runs tests: a lone pytest or an xdist worker, not a controller."""
    return workers.index is not None or workers.count == 0


def machine_action(problem: str | None, settings: Settings, workers: Workers) -> str | None:
    """What a machine check's ``problem`` does to the session: "refuse" (``--sdmem-exclusive``:
    the xdist controller refuses before any worker starts), "warn" (once, by the process that
    measures), or None (no problem; or ``--sdmem-share-gpu``, where the other workers are on
    the card by design and the check is only recorded)."""
    if problem is None or settings.share_gpu:
        return None
    if settings.exclusive:
        return "refuse"
    return "warn" if runs_tests(workers) else None


def warms_up(settings: Settings, workers: Workers) -> bool:
    """Whether this process warms its CUDA device up before the first test (see
    ``memory.cuda.warm_up``): only a process that measures on a real GPU."""
    return settings.is_cuda and not settings.estimate and runs_tests(workers)


def session_baseline(backend: MemoryBackend, warm_up: Callable[[], None],
                     what: str) -> dict[str, Any]:
    """Run ``warm_up`` and record what it left on the device: the session's baseline.

    What stays allocated after a settle is per-process state (library workspaces) that every
    later absolute peak includes; the record says how much, once, so no test is blamed for it.
    """
    backend.settle()
    before = backend.allocated()
    warm_up()
    backend.settle()
    after = backend.allocated()
    return {"device": backend.device, "allocated_bytes": after,
            "added_by_warm_up_bytes": after - before, "reserved_bytes": backend.reserved(),
            "warm_up": what}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _workers(config: pytest.Config) -> Workers:
    """pytest-xdist's layout: workers started by this controller, or this worker's index."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return Workers(count=int(workerinput.get("workercount", 0)),
                       index=int(str(workerinput["workerid"]).removeprefix("gw")))
    distributed = getattr(config.option, "dist", "no") != "no"
    return Workers(count=len(getattr(config.option, "tx", None) or []) if distributed else 0)


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", doc if doc.startswith(name) else f"{name}: {doc}")
    raw = {opt.dest: resolve(config, opt.dest) for opt in OPTIONS}
    if not raw["sdmem_estimate"] and config.getoption("sdmem_estimate_for") is None:
        raw["sdmem_estimate_for"] = None  # an ini default for estimate runs; the flag alone errs
    workers = _workers(config)
    try:
        settings = build_settings(raw, default_cache_dir(config), workers=workers)
        check_locations(*session_locations(settings, config.getoption("xmlpath", None)))
    except (SettingsError, OutputError) as exc:
        raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
    config.stash[SETTINGS] = settings
    hooks = SessionHooks(config, settings, workers)
    config.stash[SESSION] = hooks
    config.pluginmanager.register(hooks, "sdmem-session")


def environment_header(device: str, env: dict[str, Any]) -> list[str]:
    """The terminal header's lines: the GPU the figures come from (what ``--sdmem-compare``
    needs alike), and the session baseline that every absolute peak includes."""
    lines = []
    if gpu := env.get("gpu"):
        def part(label: str, *values: Any, unit: str = "") -> str | None:
            if all(v is None for v in values):
                return None
            return f"{label} {'/'.join('?' if v is None else str(v) for v in values)}{unit}"

        parts = [part("driver", gpu["driver"]), part("CUDA driver", gpu["cuda_driver"]),
                 part("torch", env.get("torch")), part("CUDA", env.get("cuda_version")),
                 part("SM clock", gpu["sm_clock_mhz"], gpu["sm_clock_max_mhz"], unit=" MHz"),
                 part("memory clock", gpu["memory_clock_mhz"], gpu["memory_clock_max_mhz"],
                      unit=" MHz"),
                 part("power limit", gpu["power_limit_w"], unit=" W"),
                 part("ECC", gpu["ecc"]), part("MIG", gpu["mig"])]
        lines.append(f"sdmem: {device} {gpu['name']} ({gpu['uuid']}): "
                     + ", ".join(p for p in parts if p is not None))
    if (card := env.get("estimate_gpu")) is not None:
        lines.append(f"sdmem: estimates stand for {card}"
                     + ("" if env.get("estimate_for") else " (the default; --sdmem-estimate-for)"))
    if (baseline := env.get("session_baseline")) is not None:
        lines.append(
            f"sdmem: session baseline on {baseline['device']}: "
            f"{format_size(baseline['allocated_bytes'])} allocated after the warm-up "
            f"({baseline['warm_up']}); every absolute peak includes it")
    return lines


def _skip_reason(state: TestState, fixturenames: set[str], settings: Settings) -> str | None:
    """Why this test cannot run in this session, decided at collection (None: it can)."""
    if "sd_pipe" in fixturenames or state.min_speedup is not None:
        # Imports torch: only for tests that use a pipeline (see the module docstring).
        from pytest_sdmem.building.techniques import parse_technique, unmet_requirements
    if "sd_pipe" in fixturenames:
        ts = parse_technique(state.technique or "none")
        if settings.estimate:
            from pytest_sdmem.estimate import unsupported_reason

            reason = unsupported_reason(ts)
            if reason is not None:
                return reason
        elif missing := unmet_requirements(ts, settings.device):
            return "; ".join(missing)
    if state.min_speedup is not None and not settings.estimate:
        baseline = parse_technique(state.min_speedup.baseline)
        if missing := unmet_requirements(baseline, settings.device):
            return f"the min_speedup baseline {baseline.expr!r} cannot run: " + "; ".join(missing)
    if not settings.estimate:
        return None
    if state.min_speedup is not None and state.max_vram is None:
        return MIN_SPEEDUP_NEEDS_TIMINGS
    if "cuda_mem_tracker" in fixturenames:
        return "cuda_mem_tracker blocks measure a real device: skipped with --sdmem-estimate"
    if state.max_vram is not None and "sd_pipe" not in fixturenames:
        return "--sdmem-estimate estimates sd_pipe generations, and this test has none"
    return None


def _family_refusal(item: pytest.Item, state: TestState, hooks: SessionHooks) -> str | None:
    """Why the session model's family refuses the technique of this sd_pipe test (None: it
    takes it). A technique from a parametrization (a suite run against whatever model the
    session has) is a skip reason; one a marker asks for by name (``sd_technique``, or
    ``min_speedup``'s baseline for a test that runs) is a TechniqueError, since what was asked
    would otherwise not be run."""
    family = hooks.model_family
    if family is None:  # unreadable model: sd_pipe fails with the reason at setup
        return None
    from pytest_sdmem.building.techniques import family_refusals, parse_technique  # torch

    def refused(expr: str) -> str:
        return "; ".join(family_refusals(parse_technique(expr), family))

    def asked(where: str, expr: str) -> TechniqueError:
        return TechniqueError(f"{where} {expr!r} cannot run on --sdmem-model "
                              f"{hooks.settings.model}: {refused(expr)}")

    if (marked := marked_technique(item)) is not None and refused(marked):
        raise asked("@pytest.mark.sd_technique", marked)
    if reason := refused(state.technique or "none"):
        return reason
    if state.min_speedup is not None and refused(state.min_speedup.baseline):
        raise asked("the min_speedup baseline", state.min_speedup.baseline)
    return None


def _validate(item: pytest.Item, hooks: SessionHooks) -> TestState:
    """Parse the item's markers and technique once, at collection; errors stay on the item."""
    settings = hooks.settings
    state = TestState()
    fixturenames = set(getattr(item, "fixturenames", ()))
    try:
        state.max_vram = one_value(item, "max_vram", lambda args, kwargs: parse_max_vram(
            args, kwargs, hooks.budgets))
        if state.max_vram is not None and settings.share_gpu:
            raise MarkerError("max_vram is refused with --sdmem-share-gpu: on a card "
                              "shared by several workers the peak is not this test's")
        state.min_speedup = one_value(item, "min_speedup", lambda args, kwargs: parse_min_speedup(
            args, kwargs, hooks.budgets))
        if state.min_speedup is not None:
            from pytest_sdmem.building.techniques import parse_technique  # imports torch

            parse_technique(state.min_speedup.baseline)
            if "sd_pipe" not in fixturenames:
                raise MarkerError("@pytest.mark.min_speedup compares the test's sd_pipe with its "
                                  "baseline: the test must use the sd_pipe fixture")
        if "sd_pipe" in fixturenames:
            state.technique = technique_of(item)
        elif (marked := marked_technique(item)) is not None:
            raise MarkerError(f"@pytest.mark.sd_technique({marked!r}) selects the technique of "
                              "the sd_pipe fixture, and this test does not use sd_pipe")
        reason = (_family_refusal(item, state, hooks) if "sd_pipe" in fixturenames else None)
        if reason is None:
            reason = _skip_reason(state, fixturenames, settings)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
    except (MarkerError, TechniqueError) as exc:
        state.error = str(exc)
    if settings.estimate:
        state.measured = "sd_pipe" in fixturenames
        state.overhead = hooks.overhead
        state.estimate_for = settings.estimate_for
    else:
        state.measured = bool(state.max_vram or state.min_speedup
                              or {"sd_pipe", "cuda_mem_tracker"} & fixturenames)
    return state


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hooks = config.stash[SESSION]
    for item in items:
        # An estimate is of a CUDA run: the GPU tier is what --sdmem-estimate is for.
        on_cuda = hooks.settings.gpu or hooks.settings.estimate
        if item.get_closest_marker("gpu") is not None and not on_cuda:
            item.add_marker(pytest.mark.skip(reason="needs --gpu"))
        item.stash[STATE] = _validate(item, hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.stash.get(STATE, None)
    if state is None:
        return
    if state.error is not None:
        pytest.fail(state.error, pytrace=False)  # the report names the test already
    if state.measured:
        backend = get_backend(item.config.stash[SETTINGS].device)
        backend.settle()
        state.allocated_before = backend.allocated()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    state = item.stash.get(STATE, None)
    if state is None or not state.measured:
        return (yield)
    settings = item.config.stash[SETTINGS]
    if settings.estimate:
        try:
            result = yield
        except NeedsRealRun as exc:
            pytest.skip(str(exc))
        if state.min_speedup is not None:
            # Its memory budget was estimated (judged in makereport); its speed cannot be.
            pytest.skip(MIN_SPEEDUP_NEEDS_TIMINGS)
        return result
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
            vram = _vram_verdict(state, None)
            state.snapshot = _stop_snapshot(item, state, vram is not None and not vram.passed)
        # The same generation the test ran (or the defaults), outside the memory window.
        pipe = state.sd_pipe
        args = asdict(pipe.last_args) if pipe.last_args is not None else {}
        from pytest_sdmem.measuring.timing import TimeBudgetTooShort

        try:
            state.speedup = pipe.speedup_over(state.min_speedup.baseline,
                                              factor=state.min_speedup.factor,
                                              max_time=settings.max_time, **args)
        except TechniqueError as exc:  # a baseline technique this model cannot take
            failure = f"min_speedup baseline: {exc}"
        except TimeBudgetTooShort as exc:  # a usage problem of the budget: its message
            failure = f"min_speedup against {state.min_speedup.baseline!r}: {exc}"
        else:
            failure = None
        if failure is not None:  # outside the except: pytest would print the chained error
            pytest.fail(failure, pytrace=False)
    return result


def _vram_verdict(state: TestState, excinfo: Any) -> VramVerdict | None:
    from pytest_sdmem.gate.verdicts import VramVerdict, is_out_of_memory

    spec = state.max_vram
    report = state.budget_report()
    if spec is None or report is None:
        return None
    if excinfo is not None and is_out_of_memory(excinfo.value):
        return VramVerdict(spec, report, oom=str(excinfo.value))
    if state.estimates and spec.metric != "allocated":
        return _estimate_verdict(state, spec, report)
    if spec.metric == "process" and report.process_peak is None:
        return VramVerdict(spec, report, error="the 'process' metric is not available here: "
                           "it needs a CUDA device and nvidia-ml-py (pip install "
                           "pytest-sdmem[nvml])")
    return VramVerdict(spec, report)


def _estimate_verdict(state: TestState, spec: MaxVram, report: MemoryReport) -> VramVerdict:
    """A reserved or process budget on an estimate: the simulation cannot see what that card
    adds (context, library workspaces, its allocator's slack), so the calibrated overhead of
    the GPU the estimate stands for must be known, and the verdict shows it beside the
    estimate. Without one the budget cannot be checked: an error, never a silent pass."""
    from pytest_sdmem.gate.verdicts import VramVerdict, metric_value

    overhead = state.overhead
    extra = overhead.for_metric(spec.metric) if overhead is not None else None
    if overhead is None or extra is None:
        if state.estimate_for is None:
            where = ("name that GPU with --sdmem-estimate-for, with its [overhead.\"GPU NAME\"] "
                     "table in the budgets file")
        elif overhead is None:
            where = f"the budgets file has no [overhead.{state.estimate_for!r}] table"
        else:
            where = (f"the budgets file's [overhead.{state.estimate_for!r}] table has no "
                     f"{spec.metric!r} figure")
        return VramVerdict(spec, report, error=(
            f"an estimate's {spec.metric!r} figure needs the calibrated overhead of the GPU it "
            f"stands for (the CUDA context, cuBLAS/cuDNN workspaces, the allocator's slack: "
            f"what the simulation cannot see); {where}. Calibrate it from a GPU run with "
            "'sdmem calibrate' (docs/estimates.md: 'Reserved and process budgets on an "
            "estimate'), or budget metric='allocated'"))
    estimate = metric_value(report, spec.metric) - extra
    return VramVerdict(spec, report, note=(
        f"estimated {format_size(estimate)} + overhead {format_size(extra)} of "
        f"{overhead.device_name!r}, calibrated: {overhead.calibrated}"))


def _properties(state: TestState, report: MemoryReport | None) -> list[tuple[str, Any]]:
    props: list[tuple[str, Any]] = []
    if report is not None:
        props += [("sdmem_device", report.device), ("sdmem_device_name", report.device_name),
                  ("sdmem_peak_allocated_bytes", report.peak_allocated),
                  ("sdmem_peak_reserved_bytes", report.peak_reserved),
                  ("sdmem_start_allocated_bytes", report.start_allocated)]
    if state.max_vram is not None:
        props += [("sdmem_max_vram_bytes", state.max_vram.limit),
                  ("sdmem_metric", state.max_vram.metric)]
    if state.speedup is not None:
        s = state.speedup
        props += [("sdmem_speedup", round(s.ratio, 4)), ("sdmem_speedup_ci_low", s.ci_low),
                  ("sdmem_speedup_ci_high", s.ci_high), ("sdmem_speedup_pairs", s.pairs),
                  ("sdmem_speedup_verdict", s.verdict), ("sdmem_speedup_method", s.method),
                  ("sdmem_speedup_median_test_s", s.median_test),
                  ("sdmem_speedup_median_base_s", s.median_base)]
    return props + _latency_properties(_latency(state))


def _latency_properties(latency: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The latency's median with its interval and its breakdown, in seconds: the figures of
    the record's latency section that are present, as ``sdmem_latency_<name>_s``."""
    if latency is None:
        return []
    from pytest_sdmem.measuring.timing import (
        BREAKDOWN_FIGURES,  # no torch: timing imports it lazily
    )

    names = ("median", "ci_low", "ci_high", *BREAKDOWN_FIGURES)
    return [(f"sdmem_latency_{name}_s", latency[name]) for name in names
            if latency.get(name) is not None]


def _latency(state: TestState) -> dict[str, Any] | None:
    """The test pipeline's own latency: from ``sd_pipe.latency()`` if the test measured it,
    else from the test side of the min_speedup rounds."""
    timing = getattr(state.sd_pipe, "last_latency", None)
    if timing is not None:
        return timing.to_dict()
    if state.speedup is not None:
        return {"median": state.speedup.median_test, "rounds": state.speedup.pairs,
                "source": "min_speedup"}
    return None


def _generation(state: TestState, settings: Settings) -> dict[str, Any] | None:
    """The record's generation settings: only a test with sd_pipe has any."""
    if state.sd_pipe is None:
        return None
    from pytest_sdmem.building.runner import generation_settings  # sd_pipe imported it already

    return generation_settings(state.sd_pipe, settings.model, settings.safety_checker)


def _record(item: pytest.Item, state: TestState, report: MemoryReport | None) -> TestRecord:
    from pytest_sdmem.gate.results import TestRecord

    settings = item.config.stash[SETTINGS]
    return TestRecord(
        nodeid=item.nodeid,
        estimated=settings.estimate,
        estimate=({**state.estimates[-1].to_dict(),
                   "overhead": state.overhead.to_dict() if state.overhead else None}
                  if state.estimates else None),
        device=report.device if report else settings.device,
        device_name=report.device_name if report else "",
        model=settings.model if state.technique is not None else None,
        technique=state.technique,
        memory=report.to_dict() if report else None,
        budget=({"max_vram_bytes": state.max_vram.limit, "metric": state.max_vram.metric,
                 "key": state.max_vram.budget_key} if state.max_vram else None),
        latency=_latency(state),
        speedup=state.speedup.to_dict() if state.speedup else None,
        generation=_generation(state, settings),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    state = item.stash.get(STATE, None)
    if state is None or not state.measured:
        return rep
    if call.when == "teardown" and state.leak_bytes is not None:
        rep.sdmem_leak_bytes = state.leak_bytes
        return rep
    if call.when != "call":
        return rep
    if rep.skipped and isinstance(rep.longrepr, tuple):
        _judge_estimate_of_skipped(state, rep)
        if rep.skipped:
            if (report := state.budget_report()) is not None:
                record = _record(item, state, report)
                record.outcome = rep.outcome
                rep.sdmem = record.to_dict()
            return rep
    rep.sdmem_estimated = bool(state.estimates)
    from pytest_sdmem.gate.verdicts import BaselineVerdict, SpeedupVerdict

    verdicts: list[Verdict] = []
    if (vram := _vram_verdict(state, call.excinfo)) is not None:
        verdicts.append(vram)
    if state.speedup is not None and state.min_speedup is not None:
        verdicts.append(SpeedupVerdict(state.speedup, state.min_speedup.baseline))
    report = state.budget_report()
    record = _record(item, state, report)
    gate = item.config.stash[SESSION].gate
    if gate is not None and call.excinfo is None:
        verdicts.append(BaselineVerdict(gate.judge(record), str(gate.path)))
    failed = [v for v in verdicts if not v.passed]
    oom = vram is not None and vram.oom is not None
    snapshot = state.snapshot or _stop_snapshot(item, state, vram is not None and not vram.passed)
    if failed and not rep.skipped:
        text = "\n".join(v.as_longrepr() for v in failed)
        if snapshot is not None and snapshot.path is not None:
            viewer = (" (open it at https://pytorch.org/memory_viz)"
                      if snapshot.path.suffix == ".pickle" else "")
            text += f"\nmemory snapshot: {snapshot.path}{viewer}"
        if (reason := _expected_failure(item)) is not None:
            # The failure an xfail test expects: XFAIL with the budget's message as reason
            # (an XPASS that pytest's skipping plugin already made, strict or not, is undone).
            rep.outcome = "skipped"
            rep.wasxfail = f"{reason}: {text}" if reason else text
            rep.longrepr = text
        elif rep.passed or oom:
            rep.outcome = "failed"
            rep.longrepr = text
            rep.sdmem_status = (failed[0].status_word, failed[0].status_letter)
    rep.sections.extend(v.as_section() for v in verdicts)
    if snapshot is not None:
        rep.sections.append(snapshot.as_section())
        record.snapshot = snapshot.to_dict()
    item.user_properties.extend(_properties(state, report))
    record.outcome = rep.outcome
    record.verdicts = [v.to_dict() for v in verdicts]
    rep.sdmem = record.to_dict()  # plain data: crosses pytest-xdist's wire to the controller
    return rep


def _expected_failure(item: pytest.Item) -> str | None:
    """The reason of the item's ``xfail`` marker when a budget failure is the failure it
    expects; None when it is not xfail, runs with ``--runxfail``, or expects a given exception
    (``raises=``: a budget failure is not that exception)."""
    if item.config.option.runxfail:
        return None
    xfailed = item.stash.get(xfailed_key, None)
    if xfailed is None or xfailed.raises is not None:
        return None
    return xfailed.reason


def _judge_estimate_of_skipped(state: TestState, rep: pytest.TestReport) -> None:
    """A test that went on past its generation (to look at pixels, or to time it) stopped with
    a skip under ``--sdmem-estimate``, but its memory budget was checked on the estimate: that
    check is the test's outcome, passed or failed like any budget, and what could not be
    checked is said in a report section. A test without a checked budget stays skipped."""
    if state.max_vram is None or not state.estimates:
        return
    _, _, reason = rep.longrepr
    rep.sections.append(("sdmem: not checked on the estimate", reason.removeprefix("Skipped: ")))
    rep.outcome = "passed"  # until the budget's verdict, judged as for any test
    rep.longrepr = None


def _stop_snapshot(item: pytest.Item, state: TestState, budget_failed: bool) -> Any:
    """Stop the test's allocation recording; on a budget failure, keep what it saw.

    CUDA writes a snapshot file for pytorch.org/memory_viz; on the CPU the report (largest live
    tensors at the peak, with the frames that made them) is saved as JSON beside it, so CI
    uploads the same kind of artifact from both tiers.
    """
    recorder, state.recorder = state.recorder, None
    if recorder is None:
        return None
    directory = item.config.stash[SETTINGS].snapshot_dir
    report = recorder.stop(budget_failed, item.nodeid, directory)
    if report is not None and report.path is None:
        from pytest_sdmem.gate.results import write_json_atomic
        from pytest_sdmem.measuring.memory.snapshot import snapshot_file_name

        report.path = write_json_atomic(directory / snapshot_file_name(item.nodeid, ".json"),
                                        report.to_dict())
    return report


def release_failed_frames() -> None:
    """Drop the local variables of the frames a failed call's traceback keeps alive.

    pytest keeps the last failure for post-mortem debugging (``sys.last_value`` and
    ``sys.last_traceback``) until the next test's call starts, which is after that test's
    memory window opened: the failed test's tensors would count in the next test's absolute
    peak and in its own leak check. By teardown the report is made and ``--pdb`` has run, so
    the frames' locals are no longer needed; the exception and its traceback stay for a
    debugger. ``frame.clear()`` drops the fast locals, but on Python < 3.13 pytest has already
    read ``f_locals`` (for ``__tracebackhide__``) and that dict is a snapshot that still holds
    them: reading it again after the clear brings it up to date (empty).
    """
    pending = [getattr(sys, "last_value", None)]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        tb = exc.__traceback__
        while tb is not None:
            tb.tb_frame.f_locals  # noqa: B018 - re-syncs the snapshot dict with the cleared frame
            tb = tb.tb_next
        pending += [exc.__cause__, exc.__context__, *getattr(exc, "exceptions", ())]


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """Memory failures read ``VRAM`` (not an assertion failure), and a verdict on an estimate
    says so: ``PASSED (estimated)``, ``VRAM (estimated)``."""
    if report.when != "call":
        return None
    status = getattr(report, "sdmem_status", None)
    estimated = " (estimated)" if getattr(report, "sdmem_estimated", False) else ""
    if status is not None and report.failed:
        word, letter = status
        return "failed", letter, (word + estimated, {"red": True})
    if estimated and report.passed:
        return "passed", ".", ("PASSED" + estimated, {"green": True})
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    release_failed_frames()
    state = item.stash.get(STATE, None)
    if state is None or not state.measured or state.allocated_before is None:
        return result
    settings = item.config.stash[SETTINGS]
    backend = get_backend(settings.device)
    backend.settle()
    state.leak_bytes = backend.allocated() - state.allocated_before
    if state.leak_bytes > settings.leak_threshold:
        message = (f"{item.nodeid} left {format_size(state.leak_bytes)} of {settings.device} "
                   f"memory allocated after it ended (threshold "
                   f"{format_size(settings.leak_threshold)}): later tests' absolute peaks will "
                   "include it. Release what the test keeps alive (globals, caches).")
        if settings.strict_leaks:
            pytest.fail(f"{message} (--sdmem-strict-leaks)", pytrace=False)
        warnings.warn(SdmemLeakWarning(message), stacklevel=1)
    return result


def _budget_lookup(budgets: Budgets, device_name: Callable[[], str]) -> BudgetLookup:
    """The markers' view of the budgets file: values of one GPU model, named when a marker
    first asks (naming this machine's device imports torch)."""

    def lookup(kind: str, key: str) -> Any:
        if kind == "vram":
            return budgets.vram(key, device_name())
        return budgets.speedup(key, device_name())

    return lookup


class SessionHooks:
    """What one pytest process knows for the whole session: its settings, environment, named
    budgets, regression gate, and (on the controller) the records of every measured test."""

    def __init__(self, config: pytest.Config, settings: Settings,
                 workers: Workers) -> None:
        self.config = config
        self.settings = settings
        self.workers = workers
        self.machine: MachineCheck | None = None
        if settings.is_cuda:
            # Before this process creates a CUDA context (see check_machine). Then a process
            # that runs tests makes its device current, so that a bare "cuda" inside diffusers
            # means this worker's card; an xdist controller creates no context at all (it
            # would be another process on a worker's card).
            self.machine = self._check_machine(workers)
            if runs_tests(workers):
                from pytest_sdmem.measuring.memory.cuda import select_device

                select_device(settings.device)
            _ = self.environment  # the warm-up, before the first test
        budgets = self._load_budgets()
        if settings.estimate_for is not None:
            self._check_estimate_for(budgets, settings.estimate_for)
        self.budgets = (_budget_lookup(budgets, self.device_name)
                        if budgets is not None else None)
        self.overhead = (budgets.overhead(self.device_name())
                         if budgets is not None and settings.estimate else None)
        if settings.estimate:
            self._check_blas_config()
        self.gate = self._load_gate()
        self.collector = Collector()
        self.collect_errors = 0
        self.interrupted: str | None = None
        #: What the session's end wrote, or why not: shown by the terminal summary, or on
        #: stderr at unconfigure when there is none (an internal error, -p no:terminal).
        self.end_lines: list[Outcome] = []

    @functools.cached_property
    def model_family(self) -> str | None:
        """The family (sd1, sd2, sdxl, sd3, flux) of the session's ``--sdmem-model``, read once
        for the whole collection; None when it cannot be read (sd_pipe fails with the reason)."""
        from pytest_sdmem.building.pipelines import ModelError, family_of  # imports diffusers

        try:
            return family_of(self.settings.model)
        except ModelError:
            return None

    def _check_blas_config(self) -> None:
        """The cuBLAS workspace settings every estimate counts: a bad one is a usage error now,
        not the same failure in every estimated test."""
        from pytest_sdmem.estimate.blas import BlasConfigError, blas_workspaces
        from pytest_sdmem.estimate.gpus import gpu_for

        try:
            blas_workspaces(gpu_for(self.settings.estimate_for))
        except BlasConfigError as exc:
            raise pytest.UsageError(f"pytest-sdmem: {exc}") from None

    def device_name(self) -> str:
        """The GPU model whose budgets apply: the one an estimate stands for, not this
        machine's; else the device's own name (asked on first use: that imports torch)."""
        return self.settings.estimate_for or get_backend(self.settings.device).device_name

    @functools.cached_property
    def environment(self) -> dict[str, Any]:
        """Where the figures come from. Built on first use, because it imports torch: a run
        that measures nothing and sets no option never does (``--gpu`` builds it at once,
        so the warm-up happens before the first test)."""
        from pytest_sdmem.gate.results import collect_environment

        settings = self.settings
        backend = get_backend(settings.device)
        env = collect_environment(settings.device, backend.device_name, backend.total_memory)
        if self.machine is not None:
            env["gpu"] = self.machine.gpu.to_dict() if self.machine.gpu is not None else None
        if warms_up(settings, self.workers):
            from pytest_sdmem.measuring.memory.cuda import WARM_UP, warm_up

            try:
                env["session_baseline"] = session_baseline(
                    backend, lambda: warm_up(settings.device), WARM_UP)
            except RuntimeError as exc:  # a CUDA error before any test: the device is unusable
                raise pytest.UsageError(f"pytest-sdmem: the warm-up on {settings.device} "
                                        f"failed, no test can run there: {exc}") from None
        if settings.estimate:
            from pytest_sdmem.estimate.gpus import gpu_for

            env["estimate_for"] = settings.estimate_for
            env["estimate_gpu"] = gpu_for(settings.estimate_for).describe()
        return env

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def _check_machine(self, workers: Workers) -> MachineCheck:
        """NVML's view of the device; another process on it is a warning, or with
        ``--sdmem-exclusive`` a usage error naming it (so is a check that cannot be made).
        Under ``--sdmem-share-gpu`` the other workers are there by design: only recorded."""
        import torch

        from pytest_sdmem.measuring.memory.cuda import (
            MachineCheck,
            check_machine,
            device_index,
            load_nvml,
        )

        device = self.settings.device
        own = {os.getpid()} | ({os.getppid()} if workers.index is not None else set())
        try:  # CUDA_VISIBLE_DEVICES may renumber or name (by UUID) the devices NVML sees
            nvml_index = torch.cuda._get_nvml_device_index(device_index(device))
        except RuntimeError as exc:
            check = MachineCheck(None, f"cannot check that no other process uses {device}: "
                                       f"its NVML index is unknown ({exc})")
        else:
            check = check_machine(device, nvml_index, load_nvml(), own)
        action = machine_action(check.problem, self.settings, workers)
        if action == "refuse":
            raise pytest.UsageError(f"pytest-sdmem: {check.problem} (--sdmem-exclusive)")
        if action == "warn":
            self.config.issue_config_time_warning(SdmemMachineWarning(check.problem),
                                                  stacklevel=2)
        return check

    def pytest_report_header(self) -> list[str]:
        if not (self.settings.is_cuda or self.settings.estimate):  # the GPU's, or the card
            return []  # an estimate stands for: a CPU run has no header (and imports no torch)
        return environment_header(self.settings.device, self.environment)

    def _load_budgets(self) -> Budgets | None:
        """The budgets file, or None without one. One that cannot be read is a usage error:
        every budgeted test would be judged wrongly."""
        if self.settings.budgets_path is None:
            return None
        from pytest_sdmem.gate.budgets import BudgetError, load_budgets

        try:
            return load_budgets(self.settings.budgets_path)
        except BudgetError as exc:
            raise pytest.UsageError(f"pytest-sdmem: {exc}") from None

    @staticmethod
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

    def _load_gate(self) -> Gate | None:
        if self.settings.compare_path is None:
            if self.settings.tolerance is not None:
                raise pytest.UsageError("pytest-sdmem: --sdmem-tolerance needs --sdmem-compare")
            return None
        from pytest_sdmem.gate.baseline import BaselineError
        from pytest_sdmem.gate.judge import Gate
        from pytest_sdmem.gate.tolerances import ToleranceError

        path = self.settings.compare_path
        if not os.path.exists(path):
            raise pytest.UsageError(
                f"pytest-sdmem: --sdmem-compare {path}: no such file. A baseline is a run "
                f"recorded with --sdmem-save (e.g. on main: pytest ... --sdmem-save {path})")

        try:
            gate = Gate.load(path, self.settings.tolerance,
                             self.environment)
        except (BaselineError, ToleranceError) as exc:
            raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
        theirs = gate.baseline.environment.get("device_name")
        ours = self.environment.get("device_name")
        if theirs != ours and not self.is_worker:
            self.config.issue_config_time_warning(SdmemBaselineWarning(
                f"baseline {gate.path} was recorded on {theirs!r}, this run is on {ours!r}: "
                "its figures are not compared (never across cards)"), stacklevel=2)
        return gate

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors += 1

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C, or ``pytest.exit()`` (which may even exit 0): the session did not end."""
        self.interrupted = excinfo.exconly().strip()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        try:
            self._summary(terminalreporter)
        finally:
            for outcome in self.end_lines:
                terminalreporter.write_line(f"sdmem: {outcome.text}", green=outcome.ok,
                                            yellow=not outcome.ok)
            self.end_lines = []

    def _summary(self, terminalreporter: Any) -> None:
        if not self.collector.records:
            return
        from pytest_sdmem.report.table import render_text, table_rows

        width = self.config.get_terminal_writer().fullwidth
        terminalreporter.write_sep("=", "sdmem: memory and speed")
        for line in render_text(table_rows(self.collector.records), width=width):
            terminalreporter.write_line(line)
        if self.gate is not None:
            comparison = self.gate.compare(self.collector.records)
            terminalreporter.write_sep("=", f"sdmem: baseline {self.gate.path}")
            for line in comparison.render_text(width).splitlines():
                terminalreporter.write_line(line)
            for message in comparison.warnings:
                terminalreporter.write_line(f"warning: {message}", yellow=True)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the outputs (see ``saving``); the terminal summary, which pytest shows after
        this hook, tells what was written."""
        if self.is_worker:
            return
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if (self.settings.json_path is None and self.settings.save_path is None
                and not (summary and self.collector.records)):
            return  # nothing to write: the environment (which imports torch) is not needed
        end = SessionEnd(exitstatus=exitstatus, collect_only=bool(self.config.option.collectonly),
                         collect_errors=self.collect_errors, interrupted=self.interrupted,
                         stopped=str(session.shouldfail or session.shouldstop or "") or None)
        reason = end.incomplete_reason()
        from pytest_sdmem.gate.results import RunResults

        run = RunResults(environment=self.environment, results=self.collector.records,
                         complete=reason is None, incomplete_reason=reason)
        self.end_lines = write_outputs(run, self.settings.json_path, self.settings.save_path)
        if summary and run.results:
            try:
                self._append_step_summary(summary, run)
            except Exception as exc:  # noqa: BLE001 - like any output: reported, not fatal
                self.end_lines.append(Outcome(f"could not append to GITHUB_STEP_SUMMARY "
                                              f"{summary}: {exc}", ok=False))

    def pytest_unconfigure(self) -> None:
        """Lines no terminal summary showed, on stderr past pytest's capture (still on here)."""
        if not self.end_lines:
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            for outcome in self.end_lines:
                print(f"pytest-sdmem: {outcome.text}", file=sys.stderr)

    def _append_step_summary(self, path: str, run: RunResults) -> None:
        """GitHub Actions shows this file on the job's page: the table, then the comparison."""
        from pytest_sdmem.report.markdown import render_markdown

        text = render_markdown(run, title="pytest-sdmem: memory and speed")
        if self.gate is not None:
            text += "\n" + self.gate.compare(run.results).render_markdown()
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
