"""What a session writes, and when: a baseline only from a session that ran to its end, outputs
checked before any test runs and never onto the compared baseline, each output on its own.

In-process pytester runs with real (small) allocations; the sessions that do not complete are
made the ordinary ways: a test raising KeyboardInterrupt (what Ctrl-C raises), --collect-only,
a -k that matches nothing, a module that fails to import, -x after a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Unmeasured: whether a session completed does not depend on what it measured, and each
# measured test costs a settle and a tracked call.
TESTS = """
def test_ok():
    pass

def test_fails():
    assert False

def test_last():
    pass
"""

MEASURED = """
import pytest, torch

@pytest.mark.max_vram("1GB")
def test_small():
    x = torch.ones(2**10, dtype=torch.uint8)

@pytest.mark.max_vram("1KB")
def test_over_budget():
    x = torch.ones(2**20, dtype=torch.uint8)
"""

OLD_BASELINE = b'{"an": "old baseline, kept byte for byte"}\n'


@pytest.fixture
def old_baseline(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(test_inner=TESTS)
    path = pytester.path / "base.json"
    path.write_bytes(OLD_BASELINE)
    return path


@pytest.mark.parametrize(("args", "files", "reason"), [
    ((), {"test_stop": "def test_ctrl_c():\n    raise KeyboardInterrupt\n"},
     "the session was interrupted (KeyboardInterrupt)"),
    (("--collect-only",), {}, "--collect-only ran no test"),
    (("-k", "no_such_test"), {}, "no test was collected (or -k/-m deselected every test)"),
    ((), {"test_broken": "import no_such_module_anywhere\n"},
     "1 error(s) during collection: not every test ran"),
    (("-x",), {}, "the session stopped early (stopping after 1 failures): not every test ran"),
], ids=["ctrl-c", "collect-only", "k-matches-nothing", "collection-error", "x-stopped"])
def test_an_incomplete_session_keeps_the_old_baseline_and_says_why(
    pytester: pytest.Pytester, old_baseline: Path, args: tuple[str, ...],
    files: dict[str, str], reason: str
) -> None:
    if files:
        pytester.makepyfile(**files)
    result = pytester.runpytest("--sdmem-save=base.json", "--sdmem-json=run.json", *args,
                                no_reraise_ctrlc=True)
    assert old_baseline.read_bytes() == OLD_BASELINE
    result.stdout.fnmatch_lines([
        f"sdmem: baseline NOT saved to base.json: {reason}; the file there is unchanged"])
    run = json.loads((pytester.path / "run.json").read_text())
    assert run["complete"] is False and run["incomplete_reason"] == reason


def test_a_completed_session_saves_its_failures_too(
    pytester: pytest.Pytester, old_baseline: Path
) -> None:
    pytester.makepyfile(test_inner=MEASURED)
    result = pytester.runpytest("--sdmem-save=base.json", "--sdmem-json=run.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["sdmem: wrote results run.json (2 records)",
                                 "sdmem: wrote baseline base.json (2 records)*"])
    saved = json.loads(old_baseline.read_text())
    assert saved["complete"] is True
    assert {r["nodeid"].split("::")[1]: r["outcome"] for r in saved["results"]} == {
        "test_small": "passed", "test_over_budget": "failed"}


def test_an_incomplete_results_file_is_refused_as_a_baseline(
    pytester: pytest.Pytester, old_baseline: Path
) -> None:
    pytester.makepyfile(test_stop="def test_ctrl_c():\n    raise KeyboardInterrupt\n")
    pytester.runpytest("--sdmem-json=run.json", no_reraise_ctrlc=True)
    result = pytester.runpytest("--sdmem-compare=run.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline run.json is the results file of a session that did "
                                 "not complete (the session was interrupted*): not a baseline"])


def _link(pytester: pytest.Pytester, how: str) -> str:
    """Another name for base.json: the same spelling, another spelling, a symlink, a hard link."""
    if how == "symlink":
        os.symlink("base.json", pytester.path / "alias.json")
    elif how == "hard link":
        os.link(pytester.path / "base.json", pytester.path / "alias.json")
    return {"same": "base.json", "spelled": "sub/../base.json"}.get(how, "alias.json")


@pytest.mark.parametrize("option", ["--sdmem-json", "--sdmem-save", "--junitxml"])
@pytest.mark.parametrize("how", ["same", "spelled", "symlink", "hard link"])
def test_no_output_may_be_the_compared_baseline(
    pytester: pytest.Pytester, old_baseline: Path, option: str, how: str
) -> None:
    (pytester.path / "sub").mkdir()
    name = _link(pytester, how)
    result = pytester.runpytest("--sdmem-compare=base.json", f"{option}={name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-sdmem: {option} {name} is the same file as "
                                 "--sdmem-compare base.json*"])
    assert old_baseline.read_bytes() == OLD_BASELINE


def test_two_outputs_may_not_be_one_file(pytester: pytest.Pytester, old_baseline: Path) -> None:
    os.symlink("base.json", pytester.path / "alias.json")
    result = pytester.runpytest("--sdmem-json=alias.json", "--sdmem-save=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sdmem-json alias.json and --sdmem-save base.json are the "
                                 "same file*"])


@pytest.mark.parametrize(("option", "value", "problem"), [
    ("--sdmem-json", "a_file/run.json", "cannot be created: */a_file is not a directory"),
    ("--sdmem-save", "a_dir", "is a directory"),
    ("--junitxml", "a_file/junit.xml", "cannot be created: */a_file is not a directory"),
    ("--sdmem-snapshot-dir", "a_file", "exists and is not a directory"),
])
def test_an_unusable_output_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester, option: str, value: str, problem: str
) -> None:
    pytester.makepyfile(test_inner="def test_ran():\n    open('ran', 'w').close()\n")
    (pytester.path / "a_file").write_text("")
    (pytester.path / "a_dir").mkdir()
    result = pytester.runpytest(f"{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-sdmem: {option} {value} {problem}"])
    assert not (pytester.path / "ran").exists()


def test_one_output_failing_at_the_end_stops_neither_the_others_nor_the_summary(
    pytester: pytest.Pytester, old_baseline: Path
) -> None:
    # Valid when the session starts; the test then puts a file where the directory would go.
    pytester.makepyfile(test_inner="""
import pytest, torch

@pytest.mark.max_vram("1GB")
def test_block():
    x = torch.ones(2**10, dtype=torch.uint8)
    open('out', 'w').close()
""")
    result = pytester.runpytest("--sdmem-json=out/run.json", "--sdmem-save=base.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*sdmem: memory and speed*",
        "sdmem: could not write results out/run.json: *",
        "sdmem: wrote baseline base.json (1 record)*",
    ])
    assert json.loads(old_baseline.read_text())["complete"] is True


def test_without_a_terminal_summary_the_lines_go_to_stderr(
    pytester: pytest.Pytester, old_baseline: Path
) -> None:
    result = pytester.runpytest("--sdmem-save=base.json", "-p", "no:terminal")
    result.stderr.fnmatch_lines(["pytest-sdmem: baseline NOT saved to base.json: no test was "
                                 "measured; the file there is unchanged"])
    assert old_baseline.read_bytes() == OLD_BASELINE
