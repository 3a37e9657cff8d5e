"""What one pytest process knows for the whole session, loaded once at configure: its settings,
mode, environment, named budgets and regression gate; and (on the controller) the records of
every measured test, which its end writes (see ``saving``), shows and summarises."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_sdmem.base.errors import TechniqueError
from pytest_sdmem.gate.markers import MarkerError, one_value, parse_max_vram, parse_min_speedup
from pytest_sdmem.gate.outputs import OutputError, check_locations, session_locations
from pytest_sdmem.gate.settings import Settings, SettingsError, Workers, build_settings
from pytest_sdmem.measuring.memory import get_backend
from pytest_sdmem.plugin.machine import (
    check_machine,
    environment_header,
    runs_tests,
    session_baseline,
    warms_up,
    workers_of,
)
from pytest_sdmem.plugin.mode import Mode, choose_mode
from pytest_sdmem.plugin.options import default_cache_dir, option_values
from pytest_sdmem.plugin.saving import Outcome, SessionEnd, write_outputs
from pytest_sdmem.plugin.state import Collector, TestState, marked_technique, technique_of

if TYPE_CHECKING:
    from pytest_sdmem.gate.budgets import Budgets
    from pytest_sdmem.gate.judge import Gate
    from pytest_sdmem.gate.markers import BudgetLookup
    from pytest_sdmem.gate.results import RunResults
    from pytest_sdmem.measuring.memory.cuda import MachineCheck


class SdmemBaselineWarning(UserWarning):
    """Part of the baseline could not be compared (another card, another model)."""


def load_settings(config: pytest.Config, workers: Workers) -> Settings:
    """The session's settings from its options; a bad value is a usage error naming it."""
    try:
        settings = build_settings(option_values(config), default_cache_dir(config),
                                  workers=workers)
        check_locations(*session_locations(settings, config.getoption("xmlpath", None)))
    except (SettingsError, OutputError) as exc:
        raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
    return settings


def _budget_lookup(budgets: Budgets, device_name: Callable[[], str]) -> BudgetLookup:
    """The markers' view of the budgets file: values of one GPU model, named when a marker
    first asks (naming this machine's device imports torch)."""

    def lookup(kind: str, key: str) -> Any:
        if kind == "vram":
            return budgets.vram(key, device_name())
        return budgets.speedup(key, device_name())

    return lookup


class Session:
    """One pytest process's session (see the module docstring)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.workers = workers_of(config)
        self.settings = settings = load_settings(config, self.workers)
        self.mode: Mode = choose_mode(settings)
        self.machine: MachineCheck | None = None
        if settings.gpu:
            # Before this process creates a CUDA context (see check_machine). Then a process
            # that runs tests makes its device current, so that a bare "cuda" inside diffusers
            # means this worker's card; an xdist controller creates no context at all (it
            # would be another process on a worker's card).
            self.machine = check_machine(config, settings, self.workers)
            if runs_tests(self.workers):
                from pytest_sdmem.measuring.memory.cuda import select_device

                select_device(settings.device)
            _ = self.environment  # the warm-up, before the first test
        budgets = self._load_budgets()
        self.mode.prepare(budgets, self.device_name)
        self.budgets = (_budget_lookup(budgets, self.device_name)
                        if budgets is not None else None)
        self.gate = self._load_gate()
        self.collector = Collector()
        self.collect_errors = 0
        self.interrupted: str | None = None
        #: What the session's end wrote, or why not: shown by the terminal summary, or on
        #: stderr at unconfigure when there is none (an internal error, -p no:terminal).
        self.end_lines: list[Outcome] = []

    def collect(self, item: pytest.Item) -> TestState:
        """The item's state: its markers and technique parsed once, at collection, and what
        keeps it from running here as a skip marker; a marker error stays on the state and
        fails the test at setup."""
        if item.get_closest_marker("gpu") is not None and not self.mode.gpu_tier:
            item.add_marker(pytest.mark.skip(reason="needs --gpu"))
        state = TestState()
        fixturenames = set(getattr(item, "fixturenames", ()))
        try:
            self._parse_markers(item, state, fixturenames)
            reason = self._family_refusal(item, state) if "sd_pipe" in fixturenames else None
            if reason is None:
                reason = self.mode.skip_reason(state, fixturenames)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
        except (MarkerError, TechniqueError) as exc:
            state.error = str(exc)
        state.measured = self.mode.is_measured(state, fixturenames)
        return state

    def _parse_markers(self, item: pytest.Item, state: TestState,
                       fixturenames: set[str]) -> None:
        state.max_vram = one_value(item, "max_vram", lambda args, kwargs: parse_max_vram(
            args, kwargs, self.budgets))
        if state.max_vram is not None and self.settings.share_gpu:
            raise MarkerError("max_vram is refused with --sdmem-share-gpu: on a card "
                              "shared by several workers the peak is not this test's")
        state.min_speedup = one_value(item, "min_speedup", lambda args, kwargs: parse_min_speedup(
            args, kwargs, self.budgets))
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

    @functools.cached_property
    def model_family(self) -> str | None:
        """The family (sd1, sd2, sdxl, sd3, flux) of the session's ``--sdmem-model``, read once
        for the whole collection; None when it cannot be read (sd_pipe fails with the reason)."""
        from pytest_sdmem.building.pipelines import ModelError, family_of  # imports diffusers

        try:
            return family_of(self.settings.model)
        except ModelError:
            return None

    def _family_refusal(self, item: pytest.Item, state: TestState) -> str | None:
        """Why the session model's family refuses the technique of this sd_pipe test (None: it
        takes it). A technique from a parametrization (a suite run against whatever model the
        session has) is a skip reason; one a marker asks for by name (``sd_technique``, or
        ``min_speedup``'s baseline) is a TechniqueError, since what was asked would otherwise
        not be run."""
        family = self.model_family
        if family is None:
            return None
        from pytest_sdmem.building.techniques import family_refusals, parse_technique  # torch

        def refused(expr: str) -> str:
            return "; ".join(family_refusals(parse_technique(expr), family))

        def asked(where: str, expr: str) -> TechniqueError:
            return TechniqueError(f"{where} {expr!r} cannot run on --sdmem-model "
                                  f"{self.settings.model}: {refused(expr)}")

        if (marked := marked_technique(item)) is not None and refused(marked):
            raise asked("@pytest.mark.sd_technique", marked)
        if reason := refused(state.technique or "none"):
            return reason
        if state.min_speedup is not None and refused(state.min_speedup.baseline):
            raise asked("the min_speedup baseline", state.min_speedup.baseline)
        return None

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
        self.mode.describe(env)
        return env

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def header(self) -> list[str]:
        """The GPU's figures, or the card an estimate stands for: a CPU run has no header (and
        imports no torch)."""
        if not self.mode.gpu_tier:
            return []
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
            gate = Gate.load(path, self.settings.tolerance, self.environment)
        except (BaselineError, ToleranceError) as exc:
            raise pytest.UsageError(f"pytest-sdmem: {exc}") from None
        theirs = gate.baseline.environment.get("device_name")
        ours = self.environment.get("device_name")
        if theirs != ours and not self.is_worker:
            self.config.issue_config_time_warning(SdmemBaselineWarning(
                f"baseline {gate.path} was recorded on {theirs!r}, this run is on {ours!r}: "
                "its figures are not compared (never across cards)"), stacklevel=2)
        return gate

    def terminal_summary(self, terminalreporter: Any) -> None:
        """The session table and the baseline comparison, then what the session's end wrote."""
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

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
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

    def _append_step_summary(self, path: str, run: RunResults) -> None:
        """GitHub Actions shows this file on the job's page: the table, then the comparison."""
        from pytest_sdmem.report.markdown import render_markdown

        text = render_markdown(run, title="pytest-sdmem: memory and speed")
        if self.gate is not None:
            text += "\n" + self.gate.compare(run.results).render_markdown()
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")

    def print_unshown(self) -> None:
        """Lines no terminal summary showed, on stderr past pytest's capture (still on here)."""
        if not self.end_lines:
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            for outcome in self.end_lines:
                print(f"pytest-sdmem: {outcome.text}", file=sys.stderr)


SESSION = pytest.StashKey[Session]()


def session_of(config: pytest.Config) -> Session:
    """The session loaded at configure."""
    return config.stash[SESSION]
