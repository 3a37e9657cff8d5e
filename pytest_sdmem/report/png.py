"""A PNG chart of a run (peak memory with budgets, latency), for places that show only images.

matplotlib is an optional extra (``pytest-sdmem[plot]``): it is imported only when a PNG is
asked for, and its absence is one clear error rather than an ImportError traceback.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pytest_sdmem.base.tables import short_label
from pytest_sdmem.base.units import format_duration, format_size
from pytest_sdmem.gate.results import RunResults
from pytest_sdmem.report.table import Bar, latency_bars, memory_bars


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed; the message says how to install it."""


def render_png(results: RunResults, title: str = "pytest-sdmem results") -> bytes:
    """The chart as PNG bytes: one panel per figure that the results contain."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(
            "PNG reports need matplotlib: pip install 'pytest-sdmem[plot]'"
        ) from exc

    panels: list[tuple[str, list[Bar], Callable[[float], str]]] = [
        (name, bars, fmt)
        for name, bars, fmt in (
            ("Peak memory (dashed: budget)", memory_bars(results.results), format_size),
            ("Latency (median)", latency_bars(results.results), format_duration),
        )
        if bars
    ]
    rows = sum(len(bars) for _, bars, _ in panels)
    # Object-oriented API on an Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(11, 1.5 + 0.35 * rows + 0.8 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title if results.complete else f"{title} (incomplete run)")
    if not panels:
        fig.text(0.5, 0.5, "No memory or latency figures in these results.", ha="center")
    else:
        heights = [len(bars) + 1 for _, bars, _ in panels]
        axes = fig.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
        for ax, panel in zip(axes, panels, strict=True):
            _draw_panel(ax, *panel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _draw_panel(ax: Any, name: str, bars: list[Bar], fmt: Callable[[float], str]) -> None:
    """Horizontal bars, first test on top as in the table, budgets as dashed ticks on each row."""
    from matplotlib.ticker import FuncFormatter

    ys = range(len(bars))
    ax.barh(ys, [b.value for b in bars], height=0.6,
            color=["#d1242f" if b.over else "#4c8bd6" for b in bars])
    for y, bar in zip(ys, bars, strict=True):
        if bar.limit is not None:
            ax.vlines(bar.limit, y - 0.45, y + 0.45, colors="#1f2328", linestyles="dashed")
        # Written past the budget line too, so the line never crosses the text; the text names
        # both figures, so a label beside the line is not read as the budget's own.
        text = fmt(bar.value) if bar.limit is None else (
            f"{fmt(bar.value)} (budget {fmt(bar.limit)})")
        ax.annotate(text, (max(bar.value, bar.limit or 0), y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(list(ys), [short_label(b.label) for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v) if v else "0"))
    room = 1.6 if any(b.limit is not None for b in bars) else 1.15  # for the labels' text
    ax.set_xlim(0, max([b.value for b in bars] + [b.limit or 0 for b in bars]) * room or 1)
    ax.set_title(name, loc="left", fontsize=10)
