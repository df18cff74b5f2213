"""Draw docs/images/dashboard.svg: some panels of the Grafana dashboard, plotted from what a real
Prometheus answered to their queries during tests/cluster/test_metrics.py's flow (a real operator,
real sidecars, an upstream that fails and recovers). No Grafana runs here, so this is the picture of
the data, not a screenshot. Standard library only.

    make dashboard-picture   # runs the test with BREAKWATER_DASHBOARD_DATA, then this script
    python hack/dashboard_picture.py DATA.json [OUT.svg]
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PANELS = [
    "Breakers by state",
    "Pods by breaker state, per upstream",
    "Requests by outcome",
    "Rejections per upstream",
    "Admissions by outcome",
    "Reports received and rejected",
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
WIDTH, HEIGHT, COLUMNS = 460, 230, 2
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 12, 26, 72


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, *, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="3,3"' if dashed else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{dash}/>'


def _text(x: float, y: float, text: str, *, size: int = 10, anchor: str = "start", fill: str = "#000") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
        f"{escape(text)}</text>"
    )


def panel_svg(
    title: str, series: list[dict[str, Any]], t0: float, t1: float, events: dict[str, float]
) -> str:
    # Only the series that ever leave zero: the dashboard shows the others as flat lines.
    shown = [s for s in series if any(v != "NaN" and float(v) > 0 for _, v in s["values"])]
    top = max((float(v) for s in shown for _, v in s["values"] if v != "NaN"), default=1.0) * 1.1
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(t: float) -> float:
        return PAD_LEFT + (t - t0) / max(t1 - t0, 1e-9) * plot_w

    def y(v: float) -> float:
        return PAD_TOP + plot_h - v / top * plot_h

    out = [
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff" stroke="#ccc"/>',
        f'<text x="8" y="17" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    bottom = PAD_TOP + plot_h
    for k in range(5):  # grid and y labels
        v = top * k / 4
        out.append(_line(PAD_LEFT, y(v), WIDTH - PAD_RIGHT, y(v), "#eee"))
        out.append(_text(PAD_LEFT - 4, y(v) + 4, _number(v), anchor="end"))
    for k in range(0, int(t1 - t0) + 1, 10):  # seconds since the start
        out.append(_text(x(t0 + k), bottom + 13, f"{k}s", anchor="middle"))
    for name, when in events.items():
        out.append(_line(x(when), PAD_TOP, x(when), bottom, "#999", dashed=True))
        out.append(_text(x(when) + 2, PAD_TOP + 9, name, size=9, fill="#666"))
    for n, s in enumerate(shown):
        color = COLORS[n % len(COLORS)]
        points = " ".join(f"{x(float(t)):.1f},{y(float(v)):.1f}" for t, v in s["values"] if v != "NaN")
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if n < 4:  # one legend line each, under the plot
            lx, ly = PAD_LEFT, bottom + 28 + n * 12
            out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}"/>')
            out.append(_text(lx + 14, ly - 4, s["legend"][:64]))
    if not shown:
        out.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" font-size="11" text-anchor="middle">all zero</text>'
        )
    return "\n".join(out)


def draw(data: dict[str, Any]) -> str:
    t0, t1 = float(data["started"]), float(data["ended"])
    namespace = data.get("namespace")
    if namespace:  # the test's throwaway namespace says nothing in a legend
        for series in data["panels"].values():
            for s in series:
                s["legend"] = s["legend"].replace(f"{namespace}/", "")
    panels = [p for p in PANELS if p in data["panels"]]
    rows = (len(panels) + COLUMNS - 1) // COLUMNS
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH * COLUMNS}" height="{HEIGHT * rows}" '
        f'font-family="sans-serif">'
    ]
    for n, title in enumerate(panels):
        dx, dy = (n % COLUMNS) * WIDTH, (n // COLUMNS) * HEIGHT
        body = panel_svg(title, data["panels"][title], t0, t1, data.get("events") or {})
        parts.append(f'<g transform="translate({dx},{dy})">\n{body}\n</g>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1]) if len(argv) > 1 else REPO / "docs" / "images" / "dashboard.svg"
    out.write_text(draw(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
