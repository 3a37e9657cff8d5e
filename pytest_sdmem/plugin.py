"""pytest hooks only: options, markers, measuring the call phase, verdicts, summary, results.

The measuring is done by the plain-Python core (``memory``, ``timing``, ``runner``); this module
decides *when* to measure (the call phase only, so building a pipeline in a fixture never counts)
and how a verdict shows up in pytest (its own status word, a report section, JUnit properties).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Generator
from dataclasses import asdict
from typing import Any

import pytest

from pytest_sdmem.fixtures import cuda_mem_tracker, sd_pipe  # noqa: F401 - fixtures of the plugin
from pytest_sdmem.markers import (
    MARKERS,
    BudgetLookup,
    MarkerError,
    MaxVram,
    parse_max_vram,
    parse_min_speedup,
    parse_sd_technique,
)
from pytest_sdmem.memory import MemoryReport, MemoryTracker, get_backend
from pytest_sdmem.options import OPTIONS, add_options, default_cache_dir, resolve
from pytest_sdmem.report.table import render_text, table_rows
from pytest_sdmem.results import RunResults, TestRecord, collect_environment
from pytest_sdmem.settings import Settings, SettingsError, build_settings
from pytest_sdmem.state import SETTINGS, STATE, Collector, TestState, technique_of
from pytest_sdmem.techniques import TechniqueError, parse_technique, unmet_requirements
from pytest_sdmem.units import format_size
from pytest_sdmem.verdicts import SpeedupVerdict, VramVerdict, is_out_of_memory

DEFAULT_BUDGETS = "tests/techniques/budgets.toml"
BUDGETS = pytest.StashKey["BudgetLookup | None"]()


class SdmemLeakWarning(UserWarning):
    """A measured test left device memory behind, which would inflate later tests' peaks."""


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", doc if doc.startswith(name) else f"{name}: {doc}")
    raw = {opt.dest: resolve(config, opt.dest) for opt in OPTIONS}
    default_budgets = config.rootpath / DEFAULT_BUDGETS
    if raw["sdmem_budgets"] is None and default_budgets.is_file():
        raw["sdmem_budgets"] = str(default_budgets)
    try:
        settings = build_settings(raw, default_cache_dir(config.rootpath))
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
    config.stash[SETTINGS] = settings
    config.stash[BUDGETS] = _budget_lookup(settings)
    config.pluginmanager.register(SessionHooks(config), "sdmem-session")


def _budget_lookup(settings: Settings) -> BudgetLookup | None:
    """Named budgets for this session's device, or None without a budgets file.

    A budgets file that cannot be read is a usage error: every budgeted test would be wrong.
    """
    if settings.budgets_path is None:
        return None
    from pytest_sdmem.budgets import BudgetError, load_budgets

    try:
        budgets = load_budgets(settings.budgets_path)
    except BudgetError as exc:
        raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
    device_name = get_backend(settings.device).device_name

    def lookup(kind: str, key: str) -> Any:
        if kind == "vram":
            return budgets.vram(key, device_name)
        return budgets.speedup(key, device_name)

    return lookup


def _validate(item: pytest.Item, settings: Settings) -> TestState:
    """Parse the item's markers and technique once, at collection; errors stay on the item."""
    state = TestState()
    lookup = item.config.stash[BUDGETS]
    try:
        if (mark := item.get_closest_marker("max_vram")) is not None:
            state.max_vram = parse_max_vram(mark.args, mark.kwargs, lookup)
        if (mark := item.get_closest_marker("min_speedup")) is not None:
            state.min_speedup = parse_min_speedup(mark.args, mark.kwargs, lookup)
            parse_technique(state.min_speedup.baseline)
            if "sd_pipe" not in getattr(item, "fixturenames", ()):
                raise MarkerError("@pytest.mark.min_speedup compares the test's sd_pipe with its "
                                  "baseline: the test must use the sd_pipe fixture")
        if (mark := item.get_closest_marker("sd_technique")) is not None:
            parse_sd_technique(mark.args, mark.kwargs)
        if "sd_pipe" in getattr(item, "fixturenames", ()):
            state.technique = technique_of(item)
            missing = unmet_requirements(parse_technique(state.technique), settings.device)
            if missing:
                item.add_marker(pytest.mark.skip(reason="; ".join(missing)))
    except (MarkerError, TechniqueError) as exc:
        state.error = str(exc)
    state.measured = bool(
        state.max_vram or state.min_speedup
        or {"sd_pipe", "cuda_mem_tracker"} & set(getattr(item, "fixturenames", ()))
    )
    return state


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS]
    for item in items:
        if item.get_closest_marker("gpu") is not None and not settings.gpu:
            item.add_marker(pytest.mark.skip(reason="needs --gpu"))
        item.stash[STATE] = _validate(item, settings)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.stash.get(STATE, None)
    if state is None:
        return
    if state.error is not None:
        pytest.fail(f"{item.nodeid}: {state.error}", pytrace=False)
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
    tracker = MemoryTracker(get_backend(settings.device))
    tracker.start()
    try:
        result = yield
    finally:
        state.call_report = tracker.stop()
    if state.min_speedup is not None and state.sd_pipe is not None:
        # The same generation the test ran (or the defaults), outside the memory window.
        pipe = state.sd_pipe
        args = asdict(pipe.last_args) if pipe.last_args is not None else {}
        state.speedup = pipe.speedup_over(state.min_speedup.baseline,
                                          factor=state.min_speedup.factor,
                                          max_time=settings.max_time, **args)
    return result


def _vram_verdict(state: TestState, excinfo: Any) -> VramVerdict | None:
    spec: MaxVram | None = state.max_vram
    report = state.budget_report()
    if spec is None or report is None:
        return None
    if excinfo is not None and is_out_of_memory(excinfo.value):
        return VramVerdict(spec, report, oom=str(excinfo.value))
    if spec.metric == "process" and report.process_peak is None:
        return VramVerdict(spec, report, error="the 'process' metric is not available here: "
                           "it needs a CUDA device and nvidia-ml-py (pip install "
                           "pytest-sdmem[nvml])")
    return VramVerdict(spec, report)


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
                  ("sdmem_speedup_verdict", s.verdict)]
    return props


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
    verdicts: list[Any] = []
    if (vram := _vram_verdict(state, call.excinfo)) is not None:
        verdicts.append(vram)
    if state.speedup is not None and state.min_speedup is not None:
        verdicts.append(SpeedupVerdict(state.speedup, state.min_speedup.baseline))
    failed = [v for v in verdicts if not v.passed]
    if failed and (rep.passed or (vram in failed and vram.oom is not None)):
        rep.outcome = "failed"
        rep.longrepr = "\n".join(v.as_longrepr() for v in failed)
        rep.sdmem_status = (failed[0].status_word, failed[0].status_letter)
        if vram is not None and vram.oom is not None:
            _release_oom(call)
    for v in verdicts:
        rep.sections.append(v.as_section())
    report = state.budget_report()
    item.user_properties.extend(_properties(state, report))
    rep.sdmem = _record(item, state, report, rep.outcome, verdicts).to_dict()
    return rep


def _release_oom(call: pytest.CallInfo[None]) -> None:
    """Free what the failed test's frames hold, so the next test starts with memory released.

    ``frame.clear()`` drops the fast locals, but pytest has already read ``f_locals`` (looking
    for ``__tracebackhide__``), and that snapshot dict keeps the tensors alive: empty it too.
    """
    tb = call.excinfo.tb if call.excinfo is not None else None
    while tb is not None:
        frame = tb.tb_frame
        try:
            frame.clear()
        except RuntimeError:  # a frame still executing (pytest's own): leave it alone
            pass
        else:
            frame.f_locals.clear()
        tb = tb.tb_next
    gc.collect()


def _record(item: pytest.Item, state: TestState, report: MemoryReport | None, outcome: str,
            verdicts: list[Any]) -> TestRecord:
    settings = item.config.stash[SETTINGS]
    return TestRecord(
        nodeid=item.nodeid,
        outcome=outcome,
        device=settings.device,
        device_name=report.device_name if report else "",
        model=settings.model if state.technique is not None else None,
        technique=state.technique,
        memory=report.to_dict() if report else None,
        budget=({"max_vram_bytes": state.max_vram.limit, "metric": state.max_vram.metric}
                if state.max_vram else None),
        latency=_latency(state),
        speedup=state.speedup.to_dict() if state.speedup else None,
        verdicts=[v.to_dict() for v in verdicts],
    )


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


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    status = getattr(report, "sdmem_status", None)
    if report.when == "call" and status is not None and report.failed:
        word, letter = status
        return "failed", letter, (word, {"red": True})
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
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


class SessionHooks:
    """Session-wide hooks, bound to the session's collector (one instance per pytest run)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = Collector()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add(report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.collector.records:
            return
        terminalreporter.write_sep("=", "sdmem: memory and speed")
        for line in render_text(table_rows(self.collector.records)):
            terminalreporter.write_line(line)

    def pytest_sessionfinish(self) -> None:
        settings = self.config.stash[SETTINGS]
        if hasattr(self.config, "workerinput") or settings.json_path is None:
            return
        backend = get_backend(settings.device)
        run = RunResults(
            environment=collect_environment(settings.device, backend.device_name,
                                            backend.total_memory),
            results=self.collector.records,
        )
        run.write(settings.json_path)
