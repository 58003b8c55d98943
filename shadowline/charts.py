"""Line charts over time as standalone SVG, for the reports and the built-in dashboard.

Written here rather than drawn with matplotlib: a dashboard page has ten of them and
refreshes every ten seconds, and matplotlib spent about 0.3 s of CPU on each (three
quarters of a page's time); these take about a millisecond. Every name on a chart is
user data (candidate names, predicted labels) and is escaped; a series of any length
is drawn with at most two points per pixel column.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

WIDTH, HEIGHT = 750, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 26, 46
# matplotlib's default cycle ("tab10"), so charts keep the colours users know
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_TIME_STEPS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000, 7776000, 31536000,
)  # fmt: skip
_FONT = "font-family='DejaVu Sans,Arial,sans-serif'"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten) covering
    [low, high]; the first is at or below ``low`` and the last at or above ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got {low!r}..{high!r}")
    if high < low:
        low, high = high, low
    if high - low <= max(abs(low) * 1e-9, 1e-300):
        # constant (to display precision): a frame around the value
        # (a rate that stays 0 gets 0..1: a share never reads negative)
        pad = abs(low) * 0.1
        low, high = (low - pad, high + pad) if pad else (low, low + 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9)
    count = max(math.ceil(high / step - first - 1e-9), 1)
    return [(first + i) * step for i in range(count + 1)]


def _time_ticks(low: float, high: float, count: int = 6) -> tuple[list[float], float]:
    """Round instants (epoch seconds, UTC) between low and high, whole seconds, minutes,
    hours or days as the span asks, and the step between them."""
    span = high - low
    step = next((s for s in _TIME_STEPS_S if span / s <= count), _TIME_STEPS_S[-1])
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) // step) + 1)], step


def _time_label(t: float, step: float, span: float) -> str:
    """As precise as the step between ticks needs, so no two ticks read the same."""
    moment = datetime.fromtimestamp(t, tz=UTC)
    if step < 60:
        return moment.strftime("%H:%M:%S")
    if step >= 86400:
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%m-%d %H:%M" if span >= 86400 else "%H:%M")


def _number(v: float) -> str:
    return f"{v:.4g}"


def _epoch(x: Any) -> float:
    if isinstance(x, datetime):
        if x.tzinfo is None:
            x = x.replace(tzinfo=UTC)
        return x.timestamp()
    return float(x)


def _decimate(points: list[tuple[float, float]], columns: int) -> list[tuple[float, float]]:
    """At most the first, lowest, highest and last point of each pixel column, in order:
    the line looks the same and the SVG stays small however long the series."""
    if len(points) <= 2 * columns:
        return points
    x0, x1 = points[0][0], points[-1][0]
    width = (x1 - x0) / columns or 1.0
    out: list[tuple[float, float]] = []
    bucket: list[tuple[float, float]] = []
    current = None
    for p in points:
        col = min(int((p[0] - x0) / width), columns - 1)
        if col != current and bucket:
            out.extend(_extremes(bucket))
            bucket = []
        current = col
        bucket.append(p)
    out.extend(_extremes(bucket))
    return out


def _extremes(bucket: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(bucket) <= 2:
        return bucket
    keep = {0, len(bucket) - 1}
    keep.add(min(range(len(bucket)), key=lambda i: bucket[i][1]))
    keep.add(max(range(len(bucket)), key=lambda i: bucket[i][1]))
    return [bucket[i] for i in sorted(keep)]


def line_chart(
    series: dict[str, list[tuple[Any, float]]],
    title: str,
    ylabel: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """One chart as a standalone ``<svg>`` document: a line per series (sorted by name;
    markers too when a series has fewer than three points), x as UTC time, the legend
    below it. Non-finite values are left out."""
    esc = html.escape
    clean: dict[str, list[tuple[float, float]]] = {}
    for name, points in sorted(series.items()):
        pts = sorted((_epoch(x), float(y)) for x, y in points if math.isfinite(float(y)))
        if pts:
            clean[name] = pts
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    legend, legend_h = _legend(list(clean), height, width)
    full = height + legend_h
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{full:.0f}' "
        f"viewBox='0 0 {width} {full:.0f}' {_FONT} font-size='11'>",
        f"<rect width='{width}' height='{full:.0f}' fill='#fff'/>",
        f"<text x='{LEFT + plot_w / 2:.1f}' y='16' text-anchor='middle' font-size='13'>"
        f"{esc(title)}</text>",
        f"<text transform='translate(14,{TOP + plot_h / 2:.1f}) rotate(-90)' "
        f"text-anchor='middle'>{esc(ylabel)}</text>",
    ]
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    if not xs:
        parts.append(
            f"<text x='{LEFT + plot_w / 2:.1f}' y='{TOP + plot_h / 2:.1f}' "
            "text-anchor='middle' fill='#777'>no data in this range</text>"
        )
        parts.append(_frame(plot_w, plot_h))
        return "".join(parts) + "</svg>"
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        # one minute of data: centred in a ten-minute frame
        x_lo, x_hi = x_lo - 300, x_hi + 300
    y_ticks = nice_ticks(min(ys), max(ys))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    for t in y_ticks:
        y = py(t)
        parts.append(
            f"<line x1='{LEFT}' x2='{LEFT + plot_w}' y1='{y:.1f}' y2='{y:.1f}' "
            "stroke='#000' stroke-opacity='0.12'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{_number(t)}</text>"
        )
    ticks, step = _time_ticks(x_lo, x_hi)
    for t in ticks:
        x, label = px(t), _time_label(t, step, x_hi - x_lo)
        # a label at the right edge ends there instead of being cut off
        anchor, at = ("end", width - 2) if x + 3.3 * len(label) > width - 2 else ("middle", x)
        parts.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{TOP}' y2='{TOP + plot_h}' "
            "stroke='#000' stroke-opacity='0.12'/>"
            f"<text x='{at:.1f}' y='{TOP + plot_h + 16}' text-anchor='{anchor}'>{label}</text>"
        )
    parts.append(
        f"<text x='{LEFT + plot_w:.1f}' y='{height - 6}' text-anchor='end' fill='#555'>UTC</text>"
    )
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        shown = _decimate(pts, plot_w)
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in shown)
        parts.append(
            f"<polyline points='{coords}' fill='none' stroke='{color}' stroke-width='1.5' "
            f"stroke-linejoin='round'><title>{esc(name)}</title></polyline>"
        )
        if len(pts) < 3:
            parts += [
                f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{color}'/>" for x, y in pts
            ]
    parts.append(_frame(plot_w, plot_h))
    parts.append(legend)
    return "".join(parts) + "</svg>"


def _frame(plot_w: int, plot_h: int) -> str:
    return (
        f"<rect x='{LEFT}' y='{TOP}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#333' stroke-width='0.8'/>"
    )


def _legend(names: list[str], top: float, width: int) -> tuple[str, float]:
    """Entries flowing left to right below the axis, wrapping: (svg, height used).
    Below rather than over the data, so twenty labels never hide a line."""
    parts, x, y = [], float(LEFT), top + 12
    for i, name in enumerate(names):
        entry = 30 + 6.0 * len(name)
        if x > LEFT and x + entry > width - RIGHT:
            x, y = float(LEFT), y + 15
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f"<line x1='{x:.1f}' x2='{x + 18:.1f}' y1='{y - 4:.1f}' y2='{y - 4:.1f}' "
            f"stroke='{color}' stroke-width='2'/>"
            f"<text x='{x + 22:.1f}' y='{y:.1f}' font-size='10'>{html.escape(name)}</text>"
        )
        x += entry + 12
    return "".join(parts), (y - top + 8 if names else 0.0)
