"""One self-contained HTML page for a run: bar charts of peak memory and latency, and the table.

The page is a CI artifact people open from a zip on any machine, so it loads nothing: the CSS is
inline, the charts are inline SVG drawn here (no chart library, no script, no web font), and
every string from the results (node ids, technique names, environment values) is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape

from pytest_sdmem.base.tables import Row, short_label
from pytest_sdmem.base.units import format_duration, format_size
from pytest_sdmem.gate.results import RunResults
from pytest_sdmem.report.markdown import environment_line, incomplete_line
from pytest_sdmem.report.table import (
    COLUMNS,
    Bar,
    latency_bars,
    memory_bars,
    table_rows,
)

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.meta { color: #59636e; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d1d9e0; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
tr.failed td { background: #ffebe9; }
svg text { font: 12px system-ui, sans-serif; fill: #1f2328; }
svg .bar { fill: #4c8bd6; } svg .bar.over { fill: #d1242f; }
svg .limit { stroke: #1f2328; stroke-width: 2; stroke-dasharray: 4 2; }
svg .axis { stroke: #8c959f; } svg .grid { stroke: #eaeef2; }
"""

# Chart geometry, in SVG user units (pixels at 100% zoom).
_WIDTH, _LABEL_W, _VALUE_W, _ROW, _BAR, _TOP, _AXIS = 960, 380, 100, 24, 16, 8, 24


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def bar_chart_svg(title: str, bars: list[Bar], fmt: Callable[[float], str]) -> str:
    """A horizontal bar chart; a bar's ``limit`` is drawn as a dashed line across its row."""
    if not bars:
        return f'<p class="meta">No {_e(title.lower())} figures in these results.</p>'
    x0, x1 = _LABEL_W, _WIDTH - _VALUE_W
    scale = max([b.value for b in bars] + [b.limit for b in bars if b.limit is not None]) or 1.0

    def x(value: float) -> float:
        return x0 + max(value, 0.0) / scale * (x1 - x0)

    bottom = _TOP + _ROW * len(bars)
    parts = [
        f'<svg role="img" aria-label="{_e(title)}" width="{_WIDTH}" height="{bottom + _AXIS}" '
        f'viewBox="0 0 {_WIDTH} {bottom + _AXIS}"><title>{_e(title)}</title>'
    ]
    for k in range(5):  # gridlines and tick labels at 0, 25, 50, 75, 100% of the scale
        tx = x(scale * k / 4)
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{_TOP}" x2="{tx:.1f}" y2="{bottom}"/>'
            f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{_e(fmt(scale * k / 4)) if k else '0'}</text>"
        )
    for i, bar in enumerate(bars):
        y = _TOP + i * _ROW
        width = max(x(bar.value) - x0, 1.0)
        css = "bar over" if bar.over else "bar"
        parts.append(
            f'<g><title>{_e(bar.label)}: {_e(fmt(bar.value))}</title>'
            f'<text x="{x0 - 8}" y="{y + 16}" text-anchor="end">{_e(short_label(bar.label))}</text>'
            f'<rect class="{css}" x="{x0}" y="{y + (_ROW - _BAR) / 2}" width="{width:.1f}" '
            f'height="{_BAR}"/>'
            f'<text x="{x(max(bar.value, bar.limit or 0)) + 6:.1f}" y="{y + 16}">'
            f"{_e(fmt(bar.value))}</text></g>"
        )
        if bar.limit is not None:
            lx = x(bar.limit)
            parts.append(
                f'<line class="limit" x1="{lx:.1f}" y1="{y}" x2="{lx:.1f}" y2="{y + _ROW}">'
                f"<title>budget {_e(fmt(bar.limit))}</title></line>"
            )
    parts.append(f'<line class="axis" x1="{x0}" y1="{_TOP}" x2="{x0}" y2="{bottom}"/></svg>')
    return "".join(parts)


def html_table(columns: tuple[str, ...], rows: Iterable[Row]) -> str:
    """An HTML table of ``rows``; failed rows are tinted."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{"failed" if r.failed else "passed"}">'
        + "".join(f"<td>{_e(c)}</td>" for c in r.cells)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _environment_value(value: object) -> str:
    """A nested entry (the GPU's NVML record, the session baseline) as "key: value" pairs,
    not a Python dict's repr."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None)
    return str(value)


def render_html(results: RunResults, title: str = "pytest-sdmem results") -> str:
    """The whole page as a string (UTF-8 when written)."""
    records = results.results
    failed = sum(r.outcome == "failed" for r in records)
    line = incomplete_line(results)
    incomplete = f"<p><strong>{_e(line)}</strong></p>\n" if line else ""
    environment = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(_environment_value(v))}</td></tr>"
        for k, v in results.environment.items()
        if v is not None
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">{_e(environment_line(results.environment))}</p>
{incomplete}<p>{len(records)} measured tests, {failed} failed.</p>
<h2>Peak memory</h2>
{bar_chart_svg("Peak memory", memory_bars(records), format_size)}
<p class="meta">Each bar is the peak its budget is judged on (allocated memory unless the budget
names another metric); a dashed line marks the test's budget; red bars are over budget.</p>
<h2>Latency</h2>
{bar_chart_svg("Latency", latency_bars(records), format_duration)}
<h2>Results</h2>
{html_table(COLUMNS, table_rows(records))}
<h2>Environment</h2>
<table>{environment}</table>
</body>
</html>
"""
