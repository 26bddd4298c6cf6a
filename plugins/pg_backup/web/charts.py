"""Small inline SVG bar charts (no script, no external library, nothing fetched)."""

from __future__ import annotations

from html import escape


def bar_chart(
    points: list[tuple[str, float | None]],
    title: str,
    unit: str,
    *,
    width: int = 460,
    height: int = 150,
    css_class: str = "chart",
) -> str:
    """One bar per point, oldest left; a missing value leaves a gap.

    :param points: ``(label, value)``, label shown on hover (``<title>``)
    :param unit: appended to the axis maximum and each hover text, e.g. ``MB`` or ``s``
    """
    top, bottom, left = 22, 18, 44
    plot_w, plot_h = width - left - 8, height - top - bottom
    values = [v for _, v in points if v is not None]
    peak = max(values, default=0.0) or 1.0
    step = plot_w / max(len(points), 1)
    bar = max(min(step * 0.7, 28.0), 2.0)
    parts = [
        f'<svg class="{css_class}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
        f'<text x="{left - 4}" y="{top + 8}" class="axis" text-anchor="end">{_short(peak)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" class="axis" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'class="axis-line"/>',
    ]
    for i, (label, value) in enumerate(points):
        if value is None:
            continue
        h = max(plot_h * value / peak, 1.0)
        x = left + i * step + (step - bar) / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}">'
            f"<title>{escape(label)}: {_short(value)} {escape(unit)}</title></rect>"
        )
    if not values:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" class="axis" '
            'text-anchor="middle">no data yet</text>'
        )
    parts.append(
        f'<text x="{left + plot_w}" y="{height - 4}" class="axis" text-anchor="end">'
        f"{escape(unit)}, oldest left</text></svg>"
    )
    return "".join(parts)


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
