"""Server-rendered SVG charts: no JavaScript library, nothing fetched, satisfies a strict CSP.

Usage in a template: ``{% load charts %}`` then
``{% bar_chart labels values title="Judgments per day" %}``,
``{% line_chart series x_label="labels" y_label="accuracy" %}`` where series is
``{"name": [(x, y), ...], ...}``, or ``{% histogram counts edges cut=0.3 %}``.
"""

from __future__ import annotations

from django import template
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 26, 36


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2f}"


def _frame(y_min: float, y_max: float, title: str, x_label: str, y_label: str) -> list[str]:
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        value = y_min + frac * (y_max - y_min)
        y = HEIGHT - BOTTOM - frac * (HEIGHT - TOP - BOTTOM)
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')
    if x_label:
        parts.append(
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>'
        )
    if y_label:
        # Above the axis, clear of the top tick label.
        parts.append(f'<text x="{LEFT}" y="{TOP - 12}">{escape(y_label)}</text>')
    return parts


def _y(value: float, y_min: float, y_max: float) -> float:
    span = (y_max - y_min) or 1.0
    return HEIGHT - BOTTOM - (value - y_min) / span * (HEIGHT - TOP - BOTTOM)


@register.simple_tag
def bar_chart(labels, values, title: str = "", x_label: str = "", y_label: str = ""):
    labels, values = list(labels), [float(v) for v in values]
    if not values:
        return mark_safe('<p class="muted">No data yet.</p>')
    y_max = max(values) or 1.0
    parts = _frame(0.0, y_max, title, x_label, y_label)
    slot = (WIDTH - LEFT - RIGHT) / len(values)
    every = max(1, len(values) // 10)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + i * slot + slot * 0.1
        y = _y(value, 0.0, y_max)
        parts.append(
            f'<rect class="series-0" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{HEIGHT - BOTTOM - y:.1f}">'
            f"<title>{escape(label)}: {_fmt(value)}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


@register.simple_tag
def histogram(counts, edges, cut=None, title: str = "", x_label: str = "", y_label: str = "count"):
    """Bars for ``len(edges) - 1`` bins; ``cut`` draws a dashed line at that x value."""
    counts, edges = [float(c) for c in counts], [float(e) for e in edges]
    if not counts or len(edges) != len(counts) + 1:
        return mark_safe('<p class="muted">No data yet.</p>')
    y_max = max(counts) or 1.0
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    parts = _frame(0.0, y_max, title, x_label, y_label)

    def x_of(value: float) -> float:
        return LEFT + (value - lo) / span * (WIDTH - LEFT - RIGHT)

    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        y = _y(count, 0.0, y_max)
        parts.append(
            f'<rect class="series-0" x="{x_of(left):.1f}" y="{y:.1f}" width="{max(x_of(right) - x_of(left) - 1, 1):.1f}" '
            f'height="{HEIGHT - BOTTOM - y:.1f}"><title>{_fmt(left)}–{_fmt(right)}: {_fmt(count)}</title></rect>'
        )
    for value in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text x="{x_of(value):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{_fmt(value)}</text>'
        )
    if cut is not None and lo <= float(cut) <= hi:
        x = x_of(float(cut))
        parts.append(f'<line class="cut" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


@register.simple_tag
def line_chart(series, title: str = "", x_label: str = "", y_label: str = "", y_min=None, y_max=None):
    """``series``: mapping name -> list of (x, y). Draws lines with points and a legend."""
    series = {str(name): [(float(x), float(y)) for x, y in points] for name, points in dict(series).items()}
    points = [p for pts in series.values() for p in pts]
    if not points:
        return mark_safe('<p class="muted">No data yet.</p>')
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    lo = float(y_min) if y_min is not None else min(ys)
    hi = float(y_max) if y_max is not None else max(ys)
    if hi == lo:
        hi = lo + 1.0
    parts = _frame(lo, hi, title, x_label, y_label)
    x_span = (x_hi - x_lo) or 1.0

    def x_of(value: float) -> float:
        return LEFT + (value - x_lo) / x_span * (WIDTH - LEFT - RIGHT)

    for value in (x_lo, x_hi):
        parts.append(
            f'<text x="{x_of(value):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{_fmt(value)}</text>'
        )
    legend = []
    for index, (name, pts) in enumerate(series.items()):
        css = f"series-{index % 4}"
        coords = " ".join(f"{x_of(x):.1f},{_y(y, lo, hi):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline class="line {css}" points="{coords}"/>')
        for x, y in pts:
            parts.append(
                f'<circle class="{css}" cx="{x_of(x):.1f}" cy="{_y(y, lo, hi):.1f}" r="3">'
                f"<title>{escape(name)}: {_fmt(x)}, {_fmt(y)}</title></circle>"
            )
        legend.append(f'<span><span class="swatch {css}"></span>{escape(name)}</span>')
    parts.append("</svg>")
    return mark_safe("".join(parts) + f'<div class="legend">{"".join(legend)}</div>')
