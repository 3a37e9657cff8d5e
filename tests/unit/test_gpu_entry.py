"""What a GPU machine must have before the GPU tier starts: triton's build tools for
``compile``, and every runtime requirement of the project and of diffusers (``sdmem-doctor``).

The compile probe is given a machine description (its environment and include directory)
made of real files: an executable named ``gcc`` on a ``PATH``, a ``Python.h``, or their absence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import torch

from pytest_sdmem import doctor
from pytest_sdmem.building.techniques import triton_build_problem
from pytest_sdmem.doctor import requirement_problems


@pytest.fixture
def toolchain(tmp_path: Path) -> tuple[dict[str, str], str]:
    """A PATH with an executable ``gcc`` and an include directory with ``Python.h``."""
    bin_dir, include = tmp_path / "bin", tmp_path / "include"
    bin_dir.mkdir()
    include.mkdir()
    gcc = bin_dir / "gcc"
    gcc.write_text("#!/bin/sh\nexit 0\n")
    gcc.chmod(0o755)
    (include / "Python.h").write_text("/* headers */\n")
    return {"PATH": str(bin_dir)}, str(include)


def test_compile_runs_where_triton_can_build_its_launcher(
        toolchain: tuple[dict[str, str], str]) -> None:
    environ, include = toolchain
    assert triton_build_problem(environ, include) is None
    cc = os.path.join(environ["PATH"], "gcc")
    assert triton_build_problem({"PATH": "", "CC": cc}, include) is None  # $CC, as given


def test_no_c_compiler_is_a_skip_reason(toolchain: tuple[dict[str, str], str],
                                        tmp_path: Path) -> None:
    _, include = toolchain
    reason = triton_build_problem({"PATH": str(tmp_path / "empty")}, include)
    assert reason is not None and "neither gcc nor clang is on PATH" in reason
    (tmp_path / "bin" / "gcc").chmod(0o644)  # present but not executable: not a compiler
    environ = {"PATH": str(tmp_path / "bin")}
    assert "neither gcc nor clang" in (triton_build_problem(environ, include) or "")


def test_a_cc_that_does_not_exist_is_named(toolchain: tuple[dict[str, str], str]) -> None:
    environ, include = toolchain
    reason = triton_build_problem({**environ, "CC": "/opt/none/cc"}, include)
    assert reason is not None and "CC='/opt/none/cc' is not an executable" in reason


def test_missing_python_headers_are_a_skip_reason(toolchain: tuple[dict[str, str], str],
                                                  tmp_path: Path) -> None:
    environ, _ = toolchain
    reason = triton_build_problem(environ, str(tmp_path / "no-include"))
    assert reason is not None and "no Python.h in" in reason and "-dev" in reason


# --- sdmem-doctor: the runtime requirements, before pytest starts -----------------------------

def _without(*missing: str) -> Callable[[str], str]:
    """importlib.metadata.version of this environment with ``missing`` not installed."""

    def version(name: str) -> str:
        if name in missing:
            raise metadata.PackageNotFoundError(name)
        return metadata.version(name)

    return version


def test_a_machine_without_requests_is_caught_before_diffusers_errors_in_every_test() -> None:
    """diffusers requires requests (and checks it at import): an image installed with
    --no-deps that lacks it fails here, naming it and who needs it."""
    problems, checked = requirement_problems([("diffusers", "the project", ())],
                                             version=_without("requests"))
    diffusers = f"diffusers {metadata.version('diffusers')}"
    assert [str(p) for p in problems] == [f"requests (required by {diffusers}): not installed"]
    assert checked > 5, "the requirements of diffusers' requirements are followed too"


def test_a_version_outside_the_range_is_named_with_the_installed_one() -> None:
    problems, _ = requirement_problems([("packaging>=999", "the project", ())])
    assert [str(p) for p in problems] == [
        f"packaging>=999 (required by the project): packaging {metadata.version('packaging')} "
        "installed"]


def test_markers_select_python_platform_and_extras() -> None:
    roots = [("no-such-dist-for-py2; python_version < '3'", "p", ()),
             ("no-such-dist-extra; extra == 'nvml'", "p", ()),
             ("no-such-dist-wanted; extra == 'nvml'", "p", ("nvml",)),
             ("not a requirement !!", "p", ())]
    problems, _ = requirement_problems(roots)
    assert [p.requirement for p in problems] == ['no-such-dist-wanted; extra == "nvml"',
                                                 "not a requirement !!"]
    assert "an unreadable requirement" in str(problems[1])


def _project(tmp_path: Path, dependencies: list[str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "pytest-sdmem"\ndependencies = '
        + repr(dependencies).replace("'", '"')
        + '\n[project.optional-dependencies]\nnvml = ["no-such-nvml-dist"]\n')
    return tmp_path


def test_the_doctor_lists_what_is_missing_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, ["numpy", "no-such-dist-abc>=1"])
    assert doctor.main(["--project", str(project)]) == 1
    err = capsys.readouterr().err
    assert "cannot run the suite (1 problem(s))" in err
    assert f"no-such-dist-abc>=1 (required by {project / 'pyproject.toml'}): not installed" in err
    assert doctor.main(["--project", str(project), "--extra", "nvml"]) == 1
    assert "no-such-nvml-dist (required by" in capsys.readouterr().err


def test_the_doctor_passes_a_complete_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--project", str(_project(tmp_path, ["numpy", "packaging"]))]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "sdmem-doctor: ready"


def test_doctor_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, [])
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "other"\n')
    for args, fragment in ((["--project", str(project), "--extra", "bogus"], "no extra 'bogus'"),
                           (["--project", str(other)], "is not the pyproject.toml of")):
        with pytest.raises(SystemExit) as exit_info:
            doctor.main(args)
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_doctor_gpu_without_a_gpu_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    """This CPU machine is the machine without a GPU: the GPU tier is refused before pytest."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    problems, notes = doctor.gpu_report()
    assert notes == [] and len(problems) == 1
    assert problems[0].startswith("no CUDA device is visible to torch")


def test_torch_is_checked_by_importing_it_not_by_its_wheel_requirements() -> None:
    """A torch built for the machine takes CUDA and triton from elsewhere: a missing nvidia-*
    or triton wheel is not a machine that cannot run the suite."""
    problems, _ = requirement_problems([("torch", "the project", ())],
                                       version=_without("sympy", "triton", "filelock"))
    assert problems == []
