"""Reports people read: markdown tables, the self-contained HTML page, the PNG chart.

Each is produced by ``sdmem report`` from a results file on disk and then parsed back, the way a
job summary, a browser or an image viewer would take it.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_sdmem.cli import main
from pytest_sdmem.gate.results import RunResults, TestRecord
from pytest_sdmem.gate.sections import SpeedupSection
from pytest_sdmem.report.html import render_html
from pytest_sdmem.report.markdown import render_markdown
from pytest_sdmem.report.png import PlotUnavailableError, render_png
from pytest_sdmem.report.table import COLUMNS, render_text, table_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = 'tests/t.py::test_x[<script>alert("x")</script>|a&b]'


def sample_run() -> RunResults:
    def record(nodeid: str, technique: str, peak: int, **fields: object) -> TestRecord:
        """A measured record; ``fields`` are fields of its JSON object."""
        memory = {"peak_allocated_bytes": peak, "peak_reserved_bytes": peak + 10**8}
        return TestRecord.from_dict({"nodeid": nodeid, "outcome": "passed", "device": "cuda:0",
                                     "device_name": "NVIDIA L4", "model": "tiny",
                                     "technique": technique, "memory": memory, **fields})

    return RunResults(
        {"device": "cuda:0", "device_name": "NVIDIA L4", "total_memory_bytes": 24 * 10**9,
         "torch": "2.11.0"},
        [
            record("tests/techniques/test_claims.py::test_budget[fp16]", "fp16", 2_400_000_000,
                   budget={"max_vram_bytes": 3_000_000_000, "metric": "allocated"},
                   latency={"median": 1.25, "per_step": 0.05}),
            record("tests/techniques/test_claims.py::test_budget[none]", "none", 4_100_000_000,
                   outcome="failed",
                   budget={"max_vram_bytes": 3_000_000_000, "metric": "reserved"},
                   verdicts=[{"kind": "max_vram", "passed": False}]),
            record(HOSTILE, "sdpa", 900_000_000, latency={"median": 0.0123},
                   speedup={"ratio": 1.8, "ci_low": 1.7, "ci_high": 1.9}),
        ],
    )


@pytest.fixture
def results_path(tmp_path: Path) -> Path:
    return sample_run().write(tmp_path / "results.json")


def report(results_path: Path, fmt: str) -> Path:
    out = results_path.parent / "report" / f"out.{fmt}"
    assert main(["report", str(results_path), "--format", fmt, "-o", str(out)]) == 0
    return out


def split_cells(line: str) -> list[str]:
    """Cells of a GFM table line: split on pipes that are not escaped."""
    cells, cell, chars = [], "", iter(line.strip()[1:-1])
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars)
        elif ch == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    return [*cells, cell.strip()]


def test_markdown_table_has_the_right_shape(results_path: Path) -> None:
    text = report(results_path, "md").read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert all(len(split_cells(line)) == len(COLUMNS) for line in table)
    assert split_cells(table[0]) == list(COLUMNS)
    assert "NVIDIA L4 · 24.00 GB · torch 2.11.0" in text
    # The same strings as the terminal table, with markdown's special characters made inert.
    rows = table_rows(sample_run().results)
    assert split_cells(table[2])[1:] == list(rows[0].cells[1:])
    escaped = r'tests/t.py::test_x[&lt;script&gt;alert("x")&lt;/script&gt;\|a&amp;b]'
    assert split_cells(table[4])[0] == escaped


def test_a_speedup_without_an_interval_is_shown_as_such() -> None:
    """An inconclusive min_speedup may end before its first interval (heavy-tailed ratios, out
    of time): the table shows the ratio and says so, it does not crash on the missing ends."""
    run = sample_run()
    run.results[2].speedup = SpeedupSection(ratio=1.8, ci_low=None, ci_high=None)
    cells = dict(zip(COLUMNS, table_rows(run.results)[2].cells, strict=True))
    assert cells["speed-up"] == "1.80x [no interval]"


def test_the_per_step_column_shows_a_breakdown_and_a_dash_without_one() -> None:
    """A latency with a breakdown shows its median step; one without (a file written before
    the breakdown, a latency from min_speedup's rounds) a dash, beside its median."""
    rows = table_rows(sample_run().results)
    per_step = [row.cells[COLUMNS.index("per step")] for row in rows]
    latency = [row.cells[COLUMNS.index("latency")] for row in rows]
    assert per_step == ["50.0 ms", "-", "-"]
    assert latency == ["1.25 s", "-", "12.3 ms"]


def test_markdown_to_stdout_and_empty_run(tmp_path: Path, capsys) -> None:
    empty = RunResults({"device": "cpu"}).write(tmp_path / "empty.json")
    assert main(["report", str(empty)]) == 0
    assert "No measured tests" in capsys.readouterr().out
    assert "No measured tests" in render_markdown(RunResults({}))


class PageParser(HTMLParser):
    """Collects what a browser would load or run: tags, their attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser


def test_html_is_self_contained_with_charts_and_escaped_strings(results_path: Path) -> None:
    page = parse_page(report(results_path, "html").read_text(encoding="utf-8"))
    names = [tag for tag, _ in page.tags]
    assert "script" not in names and "link" not in names and "img" not in names
    for tag, attrs in page.tags:
        for attr in ("src", "href", "xlink:href", "action"):
            assert not (attrs.get(attr) or "").lower().startswith(("http:", "https:", "//")), tag
    assert names.count("svg") == 2  # peak memory and latency
    text = "".join(page.text)
    assert HOSTILE in text  # shown verbatim, parsed as text rather than markup
    # Memory: one bar per test, budgets as dashed lines, the failed one drawn over budget.
    rects = [attrs for tag, attrs in page.tags if tag == "rect"]
    assert len(rects) == 3 + 2  # 3 memory bars, 2 latency bars
    assert sum(attrs.get("class") == "bar over" for attrs in rects) == 1
    limits = [attrs for tag, attrs in page.tags if tag == "line" and attrs.get("class") == "limit"]
    assert len(limits) == 2
    assert "budget 3.00 GB" in text and "4.20 GB" in text  # the reserved figure for "reserved"
    failed_rows = [a for t, a in page.tags if t == "tr" and a.get("class") == "failed"]
    assert len(failed_rows) == 1


def test_html_without_figures_says_so() -> None:
    page = parse_page(render_html(RunResults({}, [TestRecord(nodeid="t.py::test_plain")])))
    assert "No peak memory figures" in "".join(page.text)
    assert not any(tag == "svg" for tag, _ in page.tags)


def test_png_is_a_png(results_path: Path) -> None:
    data = report(results_path, "png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert render_png(RunResults({})).startswith(PNG_SIGNATURE)  # nothing measured: still a PNG


def test_png_without_matplotlib_is_one_clear_error(
    results_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import` sees when it is absent
    with pytest.raises(PlotUnavailableError, match=r"pip install 'pytest-sdmem\[plot\]'"):
        render_png(sample_run())
    out = results_path.parent / "x.png"
    assert main(["report", str(results_path), "--format", "png", "-o", str(out)]) == 2
    assert "PNG reports need matplotlib" in capsys.readouterr().err
    assert not out.exists()


def test_a_speedup_without_an_interval_is_reported_and_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A min_speedup whose time budget ran out before it had the pairs for an interval
    (``--sdmem-max-time 1`` on a loaded machine): ``ci_low``/``ci_high`` are null in the results
    file, and every report and the comparison take it as the inconclusive result it is."""
    from pytest_sdmem.measuring.speedup import SpeedupResult

    speedup = SpeedupResult.from_pairs([0.1, 0.1], [0.125, 0.125], factor=1.5,
                                       stop_reason="max_time", elapsed=0.5)
    assert (speedup.ci_low, speedup.verdict) == (None, "inconclusive")
    record = TestRecord(nodeid="t.py::test_fast", outcome="failed", device="cpu",
                        technique="fp16", speedup=SpeedupSection.of(speedup))
    path = RunResults({"device": "cpu"}, [record]).write(tmp_path / "run.json")
    cell = table_rows([record])[0].cells[COLUMNS.index("speed-up")]
    assert cell == "1.25x [no interval: 2 pairs]"
    for fmt in ("md", "html"):
        assert main(["report", str(path), "--format", fmt]) == 0
        assert "1.25x [no interval: 2 pairs]" in capsys.readouterr().out
    assert main(["compare", str(path), str(path)]) == 0
    assert "speedup" in capsys.readouterr().out


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_table_fits_the_terminal(width: int) -> None:
    """The session table is as wide as pytest's terminal: the test id gives way first (its end
    kept), then rows become blocks; every cell still shows, the JSON keeps everything."""
    long_id = ("tests/techniques/test_weights.py::test_layerwise_casting_cuts_the_weights_"
               "further[fp16+layerwise_casting]")
    run = sample_run()
    run.results[0].nodeid = long_id
    rows = table_rows(run.results)
    natural = render_text(rows)
    assert max(map(len, natural)) > 120  # the case this is about
    lines = render_text(rows, width=width)
    assert max(map(len, lines)) <= width
    text = "\n".join(lines)
    for row in rows:
        for cell in row.cells[1:]:
            assert cell in text
    assert "[fp16+layerwise_casting]" in text


def test_a_table_that_fits_is_unchanged() -> None:
    rows = table_rows(sample_run().results)
    natural = render_text(rows)
    assert render_text(rows, width=max(map(len, natural))) == natural


def test_png_labels_name_the_budget_beside_its_line(
    results_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bar's figure is written past the budget line; it says which figure is the budget, so
    it is not read as the line's own label."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    texts: list[str] = []
    original = Axes.annotate

    def annotate(self: Axes, text: str, *args: object, **kwargs: object) -> object:
        texts.append(text)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(Axes, "annotate", annotate)
    render_png(sample_run())
    assert "2.40 GB (budget 3.00 GB)" in texts


def test_reports_of_an_incomplete_run_say_so_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session stopped early still writes its results file: every report of it says so, or a
    reader would take the missing tests for tests that were never there."""
    run = sample_run()
    run.complete, run.incomplete_reason = False, "interrupted: KeyboardInterrupt"
    run.environment["gpu"] = {"name": "NVIDIA H200", "driver": "580.1", "mig": None}
    path = run.write(tmp_path / "run.json")
    said = "Incomplete run (interrupted: KeyboardInterrupt)"
    assert said in render_markdown(run)
    page = render_html(run)
    assert said in page
    assert "name: NVIDIA H200, driver: 580.1" in page and "{&#x27;name" not in page
    assert main(["report", str(path), "--format", "md"]) == 0
    assert said in capsys.readouterr().out
    complete = sample_run()
    assert "Incomplete" not in render_markdown(complete) + render_html(complete)
