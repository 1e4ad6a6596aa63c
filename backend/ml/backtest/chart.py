"""backtest.svg: each policy's live score over the days (the mean over models of the
check's live scores that day), with a vertical line at the scenario's first day; dashed in
the same colour, the mean of the estimates of the models that had only an estimate that day
(too few labelled fresh rows: a policy that retrains every night may never have more).

Hand-written SVG: a polyline a policy, a legend, two axes with a few ticks. A day with no
score (no model had enough fresh rows) breaks the line rather than drawing it at zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 680, 300
LEFT, RIGHT, TOP, BOTTOM = 52, 190, 20, 36
COLOURS = {"nightly": "#1f77b4", "on_degrade": "#2ca02c", "on_estimate": "#9467bd",
           "never": "#d62728", "nightly_on_degrade": "#ff7f0e"}


def daily_means(days: Sequence[Mapping[str, Any]],
                key: str = "scores") -> list[float | None]:
    """The mean over models of each day's live scores, or with key="estimates" of its
    estimates (None: no model had one; documents older than estimates have none)."""
    means: list[float | None] = []
    for day in days:
        values = [s for s in day.get(key, {}).values() if s is not None]
        means.append(sum(values) / len(values) if values else None)
    return means


def _segments(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(point)
    return [r for r in runs if r]


def render(document: Mapping[str, Any]) -> str:
    """The chart of a backtest document, as SVG text."""
    available = {n: r for n, r in document["policies"].items() if r.get("available")}
    series = {name: daily_means(result["days"]) for name, result in available.items()}
    estimated = {name: daily_means(result["days"], "estimates")
                 for name, result in available.items()}
    values = [v for means in (*series.values(), *estimated.values()) for v in means
              if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 0.02:
        low, high = low - 0.01, high + 0.01
    days = max(int(document["days"]), 2)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(day: float) -> float:
        return LEFT + plot_w * day / (days - 1)

    def y(value: float) -> float:
        return TOP + plot_h * (high - value) / (high - low)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             "<title>Backtest: mean live score per day, by policy</title>",
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
             f'stroke="#999"/>']
    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(f'<text x="{LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f"{value:.3f}</text>")
    for i in range(5):
        day = round((days - 1) * i / 4)
        parts.append(f'<text x="{x(day):.1f}" y="{HEIGHT - BOTTOM + 14}" '
                     f'text-anchor="middle">{day}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                 "day</text>")
    at = document.get("at")
    if document.get("scenario") and at is not None:
        parts.append(f'<line class="scenario" x1="{x(at):.1f}" y1="{TOP}" x2="{x(at):.1f}" '
                     f'y2="{TOP + plot_h}" stroke="#555" stroke-dasharray="4 3"/>')
        # Past the middle the name goes left of the line, clear of the legend
        late = at > (days - 1) / 2
        anchor = "end" if late else "start"
        parts.append(f'<text x="{x(at) + (-3 if late else 3):.1f}" y="{TOP + 12}" '
                     f'text-anchor="{anchor}">'
                     f"{escape(str(document['scenario']))}</text>")
    for row, (name, means) in enumerate(series.items()):
        colour = COLOURS.get(name, "#333")
        dashed = [None if v is None else (x(d), y(v)) for d, v in enumerate(estimated[name])]
        for run in _segments(dashed):
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            parts.append(f'<polyline class="estimate" data-policy="{escape(name)}" '
                         f'points="{coords}" fill="none" stroke="{colour}" '
                         f'stroke-width="1" stroke-dasharray="3 2"/>')
        points = [None if v is None else (x(d), y(v)) for d, v in enumerate(means)]
        for run in _segments(points):
            if len(run) == 1:  # a day between two days without a score: a dot, not a line
                parts.append(f'<circle class="policy" data-policy="{escape(name)}" '
                             f'cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2" '
                             f'fill="{colour}"/>')
                continue
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            parts.append(f'<polyline class="policy" data-policy="{escape(name)}" '
                         f'points="{coords}" fill="none" stroke="{colour}" '
                         f'stroke-width="1.5"/>')
        ly = TOP + 14 + row * 16
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" y1="{ly - 4}" x2="{WIDTH - RIGHT + 28}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        label = name if any(v is not None for v in means) else (
            f"{name} (estimated only)" if any(v is not None for v in estimated[name])
            else f"{name} (no score)")
        # A policy whose days were a later one's is drawn over by it: say so
        covering = [later for later in list(series)[row + 1:]
                    if series[later] == means and estimated[later] == estimated[name]]
        if covering:
            label += f" (= {covering[-1]})"
        parts.append(f'<text x="{WIDTH - RIGHT + 32}" y="{ly}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
