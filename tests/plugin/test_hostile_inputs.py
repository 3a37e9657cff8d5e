"""A table of hostile inputs: for each, no INTERNALERROR, no traceback, the right exit status,
and the input (the test, the option, the file) named in the one line that reports it.

pytest: a bad option or file is a usage error at configure (exit 4); a bad marker fails its own
test (exit 1) and the others run. ``sdmem``: bad input is exit 2, never 1 (which means
"regressed"). A corrupted synthetic-model cache entry is rebuilt with a warning naming what
changed. The runs are in-process and cheap: one pytester run checks every hostile marker; each
option, file or cache corruption is one short run (the tiny model rebuilds in under a second).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_sdmem.cli import main as sdmem_main
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import EstimateSection, MemorySection, SpeedupSection

BIG = "1" + "0" * 400  # an integer past float range, as a literal in Python, JSON or TOML

# name -> (decorator line, the message the test's failure must show)
HOSTILE_MARKERS: dict[str, tuple[str, str]] = {
    "vram_huge_int": (f"max_vram({BIG})", "limit an integer of about 1e400 is not a size"),
    "vram_huge_text": (f"max_vram('{'9' * 400}GB')", "GB' is not a size"),
    "vram_exponent_text": ("max_vram('1e400GB')", "is not a size"),
    "vram_nan": ("max_vram(float('nan'))", "is not a size"),
    "vram_inf": ("max_vram(float('inf'))", "is not a size"),
    "vram_negative": ("max_vram(-1)", "limit -1 is not a size"),
    "vram_bool": ("max_vram(True)", "True is not a size"),
    "vram_none": ("max_vram(None)", "None is not a size"),
    "vram_list": ("max_vram([1])", "[1] is not a size"),
    "vram_metric": ("max_vram('3GB', metric='vram')", "metric 'vram' is unknown"),
    "vram_two_limits": ("max_vram('3GB', limit='2GB')", "takes exactly one limit"),
    "vram_budget_int": ("max_vram(budget=3)", "budget 3 is not valid"),
    "vram_budget_no_file": ("max_vram(budget='x')", "needs a budgets file"),
    "vram_huge_second_arg": ("max_vram(1, 10**5000)", "takes exactly one limit, got args=(1, "
                             "an integer of about 1e5000)"),
    "vram_huge_metric": ("max_vram('3GB', metric=10**5000)", "metric an integer of about 1e5000"),
    "vram_huge_budget": ("max_vram(budget=10**5000)", "budget an integer of about 1e5000"),
    "technique_huge_int": ("sd_technique(10**5000)", "got an integer of about 1e5000"),
    "vram_unknown_keyword": ("max_vram('3GB', limt='2GB')", "unexpected keyword(s) limt"),
    "speedup_huge_int": (f"min_speedup({BIG})", "factor is an integer of about 1e400"),
    "speedup_nan": ("min_speedup(float('nan'))", "factor nan is not a finite number"),
    "speedup_inf": ("min_speedup(float('inf'))", "factor inf is not a finite number"),
    "speedup_zero": ("min_speedup(0)", "factor 0 is not positive"),
    "speedup_text": ("min_speedup('2')", "factor '2' is not a number"),
    "speedup_empty_baseline": ("min_speedup(2, baseline='')", "baseline '' is not valid"),
    "speedup_bad_baseline": ("min_speedup(2, baseline='warp')", "unknown technique 'warp'"),
    "technique_not_text": ("sd_technique(123)", "expects a string"),
    "technique_empty": ("sd_technique('')", "empty technique expression"),
    "technique_unknown": ("sd_technique('fp17')", "unknown technique 'fp17'"),
    "technique_twice": ("sd_technique('fp16+fp16')", "fp16 is listed twice"),
    "technique_none_plus": ("sd_technique('none+fp16')", "'none' means no technique"),
    "technique_slice_zero": ("sd_technique('attention_slicing(0)')", "invalid argument '0'"),
    "technique_slice_float": ("sd_technique('attention_slicing(1e400)')",
                              "invalid argument '1e400'"),
    "technique_arg_no_param": ("sd_technique('fp16(1)')", "fp16 takes no argument"),
    "technique_unclosed": ("sd_technique('attention_slicing(1')", "unknown technique"),
    "technique_huge": ("sd_technique('x' * 100_000)", "unknown technique"),
}


def assert_clean(output: str) -> None:
    """What no hostile input may produce: pytest's crash marker, a Python traceback, or the
    exception lines (``E   ...``) of a test report's traceback."""
    assert "INTERNALERROR" not in output
    assert "Traceback (most recent call last)" not in output
    assert "During handling of the above exception" not in output
    assert not [line for line in output.splitlines() if line.startswith("E   ")], output[-3000:]


def test_every_hostile_marker_fails_its_own_test_by_name(pytester: pytest.Pytester) -> None:
    body = ["import pytest", ""]
    for name, (marker, _) in HOSTILE_MARKERS.items():
        fixture = "sd_pipe" if name.startswith(("speedup", "technique")) else ""
        body += [f"@pytest.mark.{marker}", f"def test_{name}({fixture}):", "    pass", ""]
    body += ["def test_innocent():", "    pass", ""]
    pytester.makepyfile("\n".join(body))
    result = pytester.runpytest("-rA")
    output = result.stdout.str() + result.stderr.str()
    assert_clean(output)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=len(HOSTILE_MARKERS))
    # Each test's own setup report holds its message, once (the short summary cuts long ones).
    setup = {rep.nodeid.rsplit("::test_", 1)[1]: rep.longreprtext
             for rep in result.reprec.getreports("pytest_runtest_logreport")
             if rep.when == "setup" and rep.failed}
    wrong = {name: setup.get(name) for name, (_, expected) in HOSTILE_MARKERS.items()
             if name not in setup or setup[name].count(expected) != 1}
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A FIFO opened for reading blocks until a writer comes: fail the test, never hang it."""
    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("reading a user's file blocked")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _results(path: Path, **speedup: object) -> Path:
    record = TestRecord(nodeid="test_a.py::test_a", outcome="passed", device="cpu",
                        memory=MemorySection(peak_allocated=1000, peak_reserved=1000),
                        speedup=SpeedupSection(**speedup) if speedup else None)
    return RunResults({"device": "cpu", "device_name": ""}, [record]).write(path)


def _text(content: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.write_text(content, encoding="utf-8")
        return path
    return make


def _bytes(content: bytes) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.write_bytes(content)
        return path
    return make


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _sparse(size: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        with open(path, "wb") as fh:
            fh.truncate(size)  # no blocks written: cheap however large
        return path
    return make


def _valid_results(text: str) -> Callable[[Path], Path]:
    """A valid results file with ``text`` in place of the first record's allocated peak."""
    def make(path: Path) -> Path:
        _results(path)
        data = path.read_text().replace('"peak_allocated_bytes": 1000', f'"peak_allocated_bytes": '
                                        f"{text}", 1)
        path.write_text(data)
        return path
    return make


# name -> (how to make the file, the message naming what is wrong with it)
HOSTILE_RESULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "a FIFO (named pipe), not a regular file"),
    "directory": (_directory, "a directory, not a regular file"),
    "huge": (_sparse(300 * 1024**2), "larger than the"),
    "missing": (lambda path: path, "cannot read it"),
    "big_integer": (_valid_results(BIG), "peak_allocated_bytes is not a number"),
    "big_float": (_valid_results("1e400"), "peak_allocated_bytes is not a number"),
    "nan": (_valid_results("NaN"), "peak_allocated_bytes is not a number"),
    "integer_too_long": (_valid_results("1" * 5000), "not valid JSON"),
    "nested": (_text("[" * 100_000 + "]" * 100_000), "nests deeper than Python can parse"),
    "nested_objects": (_text('{"a":' * 100_000 + "1" + "}" * 100_000), "nests deeper"),
    "not_utf8": (_bytes(b"\xff\xfe{}"), "not UTF-8 text"),
    "empty": (_text(""), "not valid JSON"),
    "results_not_list": (_text('{"schema_version": 1, "results": {}}'), "'results' must be"),
    "environment_list": (_text('{"schema_version": 1, "environment": [1], "results": []}'),
                         "not a pytest-sdmem results file"),
    "half_interval": (lambda path: _results(path, ratio=1.0, ci_low=0.9, ci_high=None),
                      "one of ci_low and ci_high"),
}

# name -> (budgets file content, the message)
HOSTILE_BUDGETS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "a FIFO (named pipe), not a regular file"),
    "directory": (_directory, "a directory, not a regular file"),
    "huge": (_sparse(64 * 1024**2), "larger than the"),
    "big_factor": (_text(f"[default]\nx = {BIG}\n"), "factor is an integer of about 1e400"),
    "big_size": (_text(f"[default]\nx = \"{'9' * 400} GB\"\n"), "is not a size"),
    "inf_factor": (_text("[default]\nx = inf\n"), "factor inf is not a finite number"),
    "nested": (_text("[default]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n"),
               "nests deeper than Python can parse"),
    "nested_tables": (_text("[default]\nx = " + "{a=" * 100_000 + "1" + "}" * 100_000 + "\n"),
                      "nests deeper than Python can parse"),
    "integer_too_long": (_text("[default]\nx = " + "1" * 5000 + "\n"), "is not valid TOML"),
    "big_float": (_text("[default]\nx = 1e400\n"), "factor inf is not a finite number"),
    "big_overhead": (_text(f"[default]\nx = 1\n[overhead.\"G\"]\nreserved = {BIG}\n"
                           "calibrated = \"by hand\"\n"), "about 1e400 is not a size"),
    "no_default": (_text("[other]\nx = 1\n"), "has no [default] table"),
    "not_toml": (_text("[default\n"), "is not valid TOML"),
}


def _run_usage_error(pytester: pytest.Pytester, *args: str) -> str:
    """Run a trivial test file with ``args``: pytest must stop at configure with exit 4."""
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*args)
    output = result.stdout.str() + result.stderr.str()
    assert_clean(output)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output[-2000:]
    return output


@pytest.mark.parametrize("case", sorted(HOSTILE_RESULTS))
def test_hostile_baseline_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, tmp_path: Path, no_hang: None, case: str
) -> None:
    make, message = HOSTILE_RESULTS[case]
    if case == "missing":  # the plugin also says how to record a baseline
        message = "no such file. A baseline is a run recorded with --sdmem-save"
    path = make(tmp_path / "base.json")
    output = _run_usage_error(pytester, f"--sdmem-compare={path}")
    assert str(path) in output and message in output


@pytest.mark.parametrize("case", sorted(HOSTILE_BUDGETS))
def test_hostile_budgets_file_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, tmp_path: Path, no_hang: None, case: str
) -> None:
    make, message = HOSTILE_BUDGETS[case]
    path = make(tmp_path / "budgets.toml")
    output = _run_usage_error(pytester, f"--sdmem-budgets={path}")
    assert f"budgets file {path}" in output and message in output


HOSTILE_OPTIONS: dict[str, tuple[list[str], str]] = {
    "max_time_nan": (["--sdmem-max-time=nan"], "--sdmem-max-time='nan' is not valid"),
    "max_time_inf": (["--sdmem-max-time=inf"], "--sdmem-max-time='inf' is not valid"),
    "max_time_big": ([f"--sdmem-max-time={BIG}"], "--sdmem-max-time="),
    "max_time_zero": (["--sdmem-max-time=0"], "--sdmem-max-time='0' is not valid"),
    "max_time_text": (["--sdmem-max-time=soon"], "--sdmem-max-time='soon' is not valid"),
    "steps_big": ([f"--sdmem-steps={BIG}"], "--sdmem-steps="),
    "steps_float": (["--sdmem-steps=2.5"], "--sdmem-steps='2.5' is not valid"),
    "size_nan": (["--sdmem-size=nan"], "--sdmem-size='nan' is not valid"),
    "size_odd": (["--sdmem-size=63"], "expected a multiple of 8"),
    "leak_big": ([f"--sdmem-leak-threshold={'9' * 400}GB"], "--sdmem-leak-threshold"),
    "leak_negative": (["--sdmem-leak-threshold=-1MB"], "--sdmem-leak-threshold"),
    "device_bogus": (["--sdmem-device=tpu"], "--sdmem-device='tpu' is not valid"),
    "device_cuda_without_gpu": (["--sdmem-device=cuda:0"], "add --gpu"),
    "tolerance_inf_percent": (["--sdmem-tolerance=vram=inf%"], "invalid tolerance 'vram=inf%'"),
    "tolerance_big_percent": ([f"--sdmem-tolerance=vram={BIG}%"], "not a finite value"),
    "tolerance_big_ratio": ([f"--sdmem-tolerance=speedup={BIG}x"], "not a finite value"),
    "tolerance_big_duration": ([f"--sdmem-tolerance=latency={BIG}s"], "not a finite value"),
    "tolerance_empty": (["--sdmem-tolerance= "], "empty tolerance spec"),
    "tolerance_twice": (["--sdmem-tolerance=vram=1%,vram=2%"], "given twice"),
    "tolerance_without_compare": (["--sdmem-tolerance=vram=1%"], "needs --sdmem-compare"),
    "estimate_for_alone": (["--sdmem-estimate-for=X"], "needs --sdmem-estimate"),
    "exclusive_without_gpu": (["--sdmem-exclusive"], "it needs --gpu"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_OPTIONS))
def test_hostile_option_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, tmp_path: Path, case: str
) -> None:
    args, message = HOSTILE_OPTIONS[case]
    if case.startswith("tolerance") and case != "tolerance_without_compare":
        args = [*args, f"--sdmem-compare={_results(tmp_path / 'base.json')}"]
    output = _run_usage_error(pytester, *args)
    assert message in output


def _sdmem(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = sdmem_main(args)
    captured = capsys.readouterr()
    err = captured.err
    assert_clean(captured.out + err)
    return status, err


@pytest.mark.parametrize("case", sorted(HOSTILE_RESULTS))
def test_hostile_results_file_is_sdmem_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_hang: None, case: str
) -> None:
    make, message = HOSTILE_RESULTS[case]
    hostile = make(tmp_path / "hostile.json")
    good = _results(tmp_path / "good.json")
    for args, what in ((["report", str(hostile)], "results file"),
                       (["compare", str(hostile), str(good)], "baseline"),
                       (["compare", str(good), str(hostile)], "results file"),
                       (["calibrate", str(hostile), str(good)], "GPU run")):
        if case == "fifo" and args[0] != "report":
            continue  # one FIFO read is the case; the others would wait on the same pipe
        status, err = _sdmem(args, capsys)
        assert status == 2, (args, err)
        assert err.count("\n") == 1 and f"{what} {hostile}" in err and message in err, err


@pytest.mark.parametrize("case", sorted(HOSTILE_BUDGETS))
def test_hostile_budgets_file_to_append_to_is_sdmem_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_hang: None, case: str
) -> None:
    make, message = HOSTILE_BUDGETS[case]
    budgets = make(tmp_path / "budgets.toml")
    runs = []
    for name, device, reserved in (("gpu", "cuda:0", 3000), ("estimate", "cuda (estimated)", 2500)):
        record = TestRecord(nodeid="t.py::t", outcome="passed", device=device,
                            device_name="GPU X" if name == "gpu" else "", model="sd15",
                            is_estimate=name == "estimate",
                            estimate_details=EstimateSection() if name == "estimate" else None,
                            memory=MemorySection(peak_allocated=2000, peak_reserved=reserved))
        runs.append(str(RunResults({"device": device}, [record]).write(tmp_path / f"{name}.json")))
    status, err = _sdmem(["calibrate", *runs, "--append", str(budgets)], capsys)
    assert status == 2 and str(budgets) in err and message in err, err


@pytest.mark.parametrize("spec", ["vram=inf%", f"vram={BIG}%", f"latency={BIG}ms",
                                  f"speedup={BIG}x", "vram=nan%", "vram=-5%", "vram=5%%"])
def test_hostile_tolerance_is_sdmem_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    good = _results(tmp_path / "good.json")
    status, err = _sdmem(["compare", str(good), str(good), "--tolerance", spec], capsys)
    assert status == 2 and "invalid tolerance" in err, err


def test_a_baseline_with_an_interval_less_speedup_is_accepted(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """An inconclusive min_speedup saved before it had an interval (``ci_low``: null) is a
    result, not a corrupt file: --sdmem-compare takes such a baseline."""
    base = _results(tmp_path / "base.json", ratio=1.25, ci_low=None, ci_high=None, pairs=2,
                    verdict="inconclusive")
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(f"--sdmem-compare={base}")
    assert_clean(result.stdout.str() + result.stderr.str())
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_the_plugin_section(pytester: pytest.Pytester, flag: str) -> None:
    """argparse %-formats help: the tolerance's "5%" once made ``pytest --help`` crash."""
    result = pytester.runpytest(flag)
    output = result.stdout.str() + result.stderr.str()
    assert_clean(output)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["pytest-sdmem: memory and speed budgets:", "*--sdmem-tolerance*",
                                 "*'vram=5%,latency=10%,startup=off,speedup=5%'*"])


def test_a_slice_larger_than_the_models_heads_fails_its_test_in_setup(
    pytester: pytest.Pytester, model_cache: Path
) -> None:
    """``attention_slicing(N)`` parses for any N; the tiny model's head count is known only once
    it is loaded, where techniques are applied: the test fails there with the registry's
    message, and the other tests run."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.sd_technique("attention_slicing(99999999999999999999)")
        def test_slice(sd_pipe):
            pass

        def test_other():
            pass
        """
    )
    result = pytester.runpytest(f"--sdmem-cache-dir={model_cache}", "-rA")
    assert_clean(result.stdout.str() + result.stderr.str())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "invalid argument 99999999999999999999 of attention_slicing for this "
        "model: its attention layers have * heads, so a slice holds 1 to * of them; expected*",
    ])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _same_size_edit(path: Path) -> None:
    text = path.read_text()
    assert '"beta_end": 0.012' in text
    path.write_text(text.replace('"beta_end": 0.012', '"beta_end": 0.019'))


def _garble(path: Path) -> None:
    path.write_bytes(b"\xff{not json" + b"\x00" * 64)


# name -> (file in the tiny entry, what is done to it, what the warning must say)
HOSTILE_CACHE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "weights_truncated": ("unet/diffusion_pytorch_model.safetensors", _truncate,
                          "diffusion_pytorch_model.safetensors"),
    "config_same_size_edit": ("scheduler/scheduler_config.json", _same_size_edit,
                              "scheduler_config.json"),
    "config_not_json": ("vae/config.json", _garble, "config.json"),
    "entry_marker_garbled": ("sdmem-entry.json", _garble, "its marker cannot be read"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CACHE))
def test_a_corrupted_cache_entry_is_rebuilt_naming_the_file(
    pytester: pytest.Pytester, model_cache: Path, tmp_path: Path, case: str
) -> None:
    """A cache entry changed after it was built (by hand, a disk error, a killed copy) is never
    loaded as the model: the test's pipeline is rebuilt, a warning names what changed, and the
    test runs as on a clean cache."""
    import shutil

    from pytest_sdmem.building.pipelines.cache import ensure_cached

    name, corrupt, named = HOSTILE_CACHE[case]
    entry = ensure_cached("tiny", model_cache)
    copy = Path(shutil.copytree(entry, tmp_path / "cache" / entry.name))
    corrupt(copy / name)
    pytester.makepyfile("def test_generates(sd_pipe):\n    assert sd_pipe(num_inference_steps=1,"
                        " height=32, width=32).shape[0] == 1\n")
    result = pytester.runpytest(f"--sdmem-cache-dir={tmp_path / 'cache'}", "-rA",
                                "-W", "always::pytest_sdmem.building.pipelines.cache.CacheWarning")
    output = result.stdout.str() + result.stderr.str()
    assert_clean(output)
    result.assert_outcomes(passed=1)
    assert "CacheWarning" in output and named in output, output[-3000:]


@pytest.mark.parametrize("model", ["a_directory", "no/such/model"])
def test_an_estimate_of_a_model_that_is_no_synthetic_one_errs_per_test(
    pytester: pytest.Pytester, model: str
) -> None:
    """``--sdmem-estimate`` estimates the synthetic models; a path or hub id given with it is
    an error of each sd_pipe test naming the model, decided at setup, not an internal error
    at collection (where the family and the estimator's refusals are looked up)."""
    (pytester.path / "a_directory").mkdir()
    pytester.makepyfile(test_inner="""
        import pytest

        @pytest.mark.max_vram("1GB")
        @pytest.mark.parametrize("sd_pipe", ["attention_slicing", "fp16"], indirect=True)
        def test_generate(sd_pipe):
            sd_pipe()
        """)
    result = pytester.runpytest("--sdmem-estimate", f"--sdmem-model={model}")
    result.assert_outcomes(errors=2)
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*model '{model}'*"])
