"""The run as GitHub-flavoured markdown, for job summaries and pull-request comments.

It renders the same rows as the terminal table (``table_rows``), so the figure a reviewer reads in
a PR comment is the string the test log printed.
"""

from __future__ import annotations

from pytest_sdmem.base.tables import escape_cell, markdown_table
from pytest_sdmem.base.units import UnitError, check_number, format_size
from pytest_sdmem.gate.results import RunResults
from pytest_sdmem.report.table import COLUMNS, table_rows


def environment_line(environment: dict[str, object]) -> str:
    """One line saying where the figures come from: the card, its memory, the key versions."""
    parts = [str(environment.get("device_name") or environment.get("device") or "unknown device")]
    try:  # a hand-edited file may hold anything here; the line shows only a usable figure
        parts.append(format_size(check_number(environment.get("total_memory_bytes"),
                                              "total memory", positive=True)))
    except UnitError:
        pass
    parts += [
        f"{name} {environment[name]}"
        for name in ("torch", "diffusers", "cuda_version", "driver_version")
        if environment.get(name)
    ]
    return " · ".join(parts)


def incomplete_line(results: RunResults) -> str | None:
    """What every report says first about a session that did not run to its end (its
    ``--sdmem-json`` file is written anyway): the tests it did not reach have no figures."""
    if results.complete:
        return None
    reason = results.incomplete_reason or "no reason recorded"
    return f"Incomplete run ({reason}): tests it did not reach have no figures here."


def render_markdown(results: RunResults, title: str = "pytest-sdmem results") -> str:
    """A heading, the environment line, and the table (or a note that nothing was measured)."""
    environment = escape_cell(environment_line(results.environment))
    lines = [f"### {escape_cell(title)}", "", environment, ""]
    if (incomplete := incomplete_line(results)) is not None:
        lines += [f"**{escape_cell(incomplete)}**", ""]
    if results.results:
        lines += markdown_table(COLUMNS, table_rows(results.results))
    else:
        lines.append("_No measured tests in these results._")
    return "\n".join(lines) + "\n"
