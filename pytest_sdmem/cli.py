"""The ``sdmem`` command: reports, baseline comparisons and overhead calibration over saved
results files.

It shares its core with the pytest plugin (``baseline.compare_runs``, the report renderers), so
``sdmem compare`` in a CI step and ``--sdmem-compare`` in the test run reach the same verdicts.

Exit status: 0 fine, 1 a figure regressed beyond its tolerance, 2 bad input (an unreadable,
corrupt or foreign file, a bad tolerance, a missing optional dependency) with one line on stderr,
3 an internal error (a bug of sdmem, one line on stderr): never 1, which a CI step reads as a
regression.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_sdmem.gate.baseline import BaselineError, compare_runs, load_baseline, load_results
from pytest_sdmem.gate.budgets import BudgetError
from pytest_sdmem.gate.calibration import CalibrationError, append_to_budgets, calibrate_files
from pytest_sdmem.gate.outputs import Location, OutputError, check_locations
from pytest_sdmem.gate.tolerances import (
    ACCEPTED_TOLERANCES,
    DEFAULT_TOLERANCE_SPEC,
    ToleranceError,
    parse_tolerances,
)
from pytest_sdmem.report.html import render_html
from pytest_sdmem.report.markdown import render_markdown
from pytest_sdmem.report.png import PlotUnavailableError, render_png

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input found after argument parsing; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmem", description="Reports and baseline comparisons over pytest-sdmem results."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    report = commands.add_parser("report", help="render a results file as markdown, HTML or PNG")
    report.add_argument("results", type=Path, metavar="RESULTS.json")
    report.add_argument("--format", choices=("md", "html", "png"), default="md")
    report.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="write here instead of stdout (required for png)")
    report.add_argument("--title", default="pytest-sdmem results")

    compare = commands.add_parser(
        "compare",
        help="compare a run against a baseline; exit 1 on any regression",
        description="Compare HEAD.json against BASE.json figure by figure. Exit status: 0 no "
        "regression, 1 a figure regressed beyond its tolerance, 2 bad input.",
    )
    compare.add_argument("base", type=Path, metavar="BASE.json")
    compare.add_argument("head", type=Path, metavar="HEAD.json")
    tolerance_help = f"{ACCEPTED_TOLERANCES} (default {DEFAULT_TOLERANCE_SPEC})"
    compare.add_argument("--tolerance", metavar="SPEC",
                         help=tolerance_help.replace("%", "%%"))  # argparse %-formats help
    compare.add_argument("--format", choices=("text", "md"), default="text")
    compare.add_argument("-o", "--output", type=Path, metavar="OUT",
                         help="write the table here instead of stdout")

    calibrate = commands.add_parser(
        "calibrate",
        help="measure a GPU model's overhead over --sdmem-estimate, for the budgets file",
        description="Pair the tests of a real GPU run (--gpu --sdmem-json) with their estimates "
        "(--sdmem-estimate --sdmem-json, same tests) and print the GPU's [overhead] table for "
        "the budgets file: per metric, the largest excess of the measured figure over the "
        "estimated reserved memory. Exit status: 0 done, 2 bad input.",
    )
    calibrate.add_argument("gpu_run", type=Path, metavar="GPU.json")
    calibrate.add_argument("estimate_run", type=Path, metavar="ESTIMATE.json")
    calibrate.add_argument("--append", type=Path, metavar="BUDGETS.toml",
                           help="also append the table to this budgets file (refused if it has "
                           "an overhead for that GPU already; the rest of the file is kept)")
    return parser


def _write(output: Path | None, content: str | bytes) -> None:
    if output is None:
        if isinstance(content, bytes):
            raise UsageError("--format png writes binary data: give -o OUT.png")
        sys.stdout.write(content)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            output.write_bytes(content)
        else:
            output.write_text(content, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc


def _check_output(output: Path | None, *inputs: tuple[str, Path]) -> None:
    """Before any work: ``-o`` must be writable and must not be a file the command reads."""
    if output is not None:
        check_locations([Location("-o", output)], [Location(name, path) for name, path in inputs])


def _report(args: argparse.Namespace) -> int:
    _check_output(args.output, ("RESULTS.json", args.results))
    results = load_results(args.results)
    render = {"md": render_markdown, "html": render_html, "png": render_png}[args.format]
    _write(args.output, render(results, title=args.title))
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    tolerances = parse_tolerances(args.tolerance)  # before reading: a typo is the cheaper error
    _check_output(args.output, ("BASE.json", args.base), ("HEAD.json", args.head))
    comparison = compare_runs(load_baseline(args.base), load_results(args.head), tolerances)
    text = comparison.render_markdown() if args.format == "md" else comparison.render_text()
    _write(args.output, text)
    return EXIT_OK if comparison.passed else EXIT_REGRESSION


def _calibrate(args: argparse.Namespace) -> int:
    calibration = calibrate_files(args.gpu_run, args.estimate_run)
    if args.append is not None:
        append_to_budgets(args.append, calibration)
        print(f"sdmem: appended the overhead of {calibration.device_name!r} to {args.append}",
              file=sys.stderr)
    sys.stdout.write(calibration.to_toml())
    return EXIT_OK


COMMANDS = {"report": _report, "compare": _compare, "calibrate": _calibrate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (argparse's own errors included) for tests."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse already printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except (BaselineError, BudgetError, CalibrationError, OutputError, ToleranceError,
            PlotUnavailableError, UsageError) as exc:
        print(f"sdmem: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a bug must not read as "regressed" (exit 1)
        print(f"sdmem: internal error, please report it: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
