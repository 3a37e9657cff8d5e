"""pytest hooks only (the pytest11 entry point): each hands its moment to the room that knows
what to do then.

The plugin decides *when* to measure (the call phase only, so building a pipeline in a fixture
never counts) and how a verdict shows up in pytest; the rooms below decide the rest:
``session`` (settings, budgets, gate, records and the session's end, loaded once at
configure), ``mode`` (measured on a device or estimated: the few operations that differ),
``outcome`` (a test's verdicts in its report), ``records`` (its record), ``leaks`` (what it
leaves behind), ``fixtures`` (``sd_pipe``, ``cuda_mem_tracker``).

Installing the plugin must cost nothing where it is not used (tests/plugin/test_plugin_tax.py,
benchmarks/plugin_tax.py): at module level the rooms import only the light modules that
register options, markers and fixtures and parse markers. Whatever imports torch or diffusers
(``techniques``, the memory backends, the environment), and the modules that only judge and
report measured tests (``verdicts``, ``results``, ``report``, ``budgets``, ``gate``), are
imported inside the function that needs them, which runs only for a test that uses a marker or
fixture of the plugin, or when one of its options is set.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_sdmem.gate.markers import MARKERS
from pytest_sdmem.plugin.fixtures import cuda_mem_tracker, sd_pipe  # noqa: F401 - fixtures of the plugin
from pytest_sdmem.plugin.leaks import check_leak, note_allocated, release_failed_frames
from pytest_sdmem.plugin.options import add_options
from pytest_sdmem.plugin.outcome import annotate, status_of
from pytest_sdmem.plugin.session import SESSION, Session, session_of
from pytest_sdmem.plugin.state import STATE, TestState


def _measured(item: pytest.Item) -> TestState | None:
    """The item's state when the plugin measures it, else None."""
    state = item.stash.get(STATE, None)
    return state if state is not None and state.measured else None


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", doc if doc.startswith(name) else f"{name}: {doc}")
    session = Session(config)
    config.stash[SESSION] = session
    config.pluginmanager.register(SessionHooks(session), "sdmem-session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = session_of(config)
    for item in items:
        item.stash[STATE] = session.collect(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.stash.get(STATE, None)
    if state is not None and state.error is not None:
        pytest.fail(state.error, pytrace=False)  # the report names the test already
    if state is not None and state.measured:
        note_allocated(state, session_of(item.config).settings.device)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    if (state := _measured(item)) is None:
        return (yield)
    return (yield from session_of(item.config).mode.run_call(item, state))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if (state := _measured(item)) is not None:
        annotate(item, call, rep, state, session_of(item.config))
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    release_failed_frames()
    if (state := _measured(item)) is not None:
        check_leak(item.nodeid, state, session_of(item.config).settings)
    return result


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    return status_of(report)


class SessionHooks:
    """The hooks that carry no ``config`` (and the session's end), registered at configure."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pytest_report_header(self) -> list[str]:
        return self.session.header()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.collector.add(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.session.collect_errors += 1

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C, or ``pytest.exit()`` (which may even exit 0): the session did not end."""
        self.session.interrupted = excinfo.exconly().strip()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.session.terminal_summary(terminalreporter)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.session.finish(session, exitstatus)

    def pytest_unconfigure(self) -> None:
        self.session.print_unshown()
