"""Geometry for the inline SVG the pages draw: chart polylines and the trace waterfall.

Only numbers leave here; every name and value is put on the page by the (escaping) templates.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.console.metric_ring import Chart
from gateway.telemetry.trace_store import StoredSpan

__all__ = ["ChartDrawing", "SpanRow", "Waterfall", "draw_chart", "draw_waterfall"]

CHART_W, CHART_H = 320.0, 90.0
WATERFALL_W = 1000.0


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    index: int  # picks the line's colour
    segments: list[str]  # SVG `points` attribute values, one per unbroken run
    latest: str


@dataclass(frozen=True, slots=True)
class ChartDrawing:
    chart: Chart
    lines: list[Line]
    top: str  # the y axis' top value, formatted
    span_seconds: float
    empty: bool


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}".strip()
    return f"{value:.3g} {unit}".strip()


def draw_chart(chart: Chart) -> ChartDrawing:
    times = [t for s in chart.series for t, _ in s.points]
    values = [v for s in chart.series for _, v in s.points if v is not None]
    top = max(values, default=0.0) or 1.0
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    width = max(t1 - t0, 1e-9)
    lines = []
    for i, series in enumerate(chart.series):
        segments: list[str] = []
        run: list[str] = []
        for t, v in series.points:
            if v is None:
                if run:
                    segments.append(" ".join(run))
                run = []
                continue
            x = (t - t0) / width * CHART_W
            y = CHART_H - v / top * (CHART_H - 4)
            run.append(f"{x:.1f},{y:.1f}")
        if run:
            segments.append(" ".join(run))
        latest = series.points[-1][1] if series.points else None
        lines.append(Line(series.label, i % 6, segments, fmt(latest, chart.unit)))
    return ChartDrawing(chart, lines, fmt(top, chart.unit), t1 - t0, not values)


@dataclass(frozen=True, slots=True)
class SpanRow:
    span: StoredSpan
    depth: int
    x: float
    width: float
    offset_ms: float
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Waterfall:
    rows: list[SpanRow]
    total_ms: float
    ticks: list[tuple[float, str]]  # (x, label)


def draw_waterfall(spans: list[StoredSpan]) -> Waterfall:
    if not spans:
        return Waterfall([], 0.0, [])
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    total = max(t1 - t0, 1)
    ids = {s.span_id for s in spans}
    children: dict[str, list[StoredSpan]] = {}
    roots: list[StoredSpan] = []
    for s in sorted(spans, key=lambda s: (s.start_ns, s.name)):
        if s.parent_span_id and s.parent_span_id in ids:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    rows: list[SpanRow] = []

    def visit(s: StoredSpan, depth: int) -> None:
        rows.append(
            SpanRow(
                s,
                depth,
                (s.start_ns - t0) / total * WATERFALL_W,
                max((s.end_ns - s.start_ns) / total * WATERFALL_W, 1.0),
                (s.start_ns - t0) / 1e6,
                (s.end_ns - s.start_ns) / 1e6,
            )
        )
        for child in children.get(s.span_id, []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    total_ms = total / 1e6
    ticks = [(WATERFALL_W * i / 4, f"{total_ms * i / 4:.3g} ms") for i in range(5)]
    return Waterfall(rows, total_ms, ticks)
