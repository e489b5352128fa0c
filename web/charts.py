"""Server-rendered pictures (inline SVG, no JavaScript): attention on the instruction per layer."""

from __future__ import annotations

from typing import Any, Mapping


def attention_chart(mass: Mapping[str, Any] | None, width: int = 360, height: int = 90,
                    pad: int = 4) -> dict | None:
    """Return polyline points for a run's unboosted and boosted attention mass per layer, or None."""
    if not isinstance(mass, Mapping):
        return None
    before, after = mass.get("unboosted"), mass.get("boosted")
    if not before or not after or len(before) != len(after):
        return None
    try:
        before, after = [float(v) for v in before], [float(v) for v in after]
    except (TypeError, ValueError):
        return None
    n = len(before)
    top = max(max(before), max(after), 1e-9)
    step = (width - 2 * pad) / max(n - 1, 1)

    def points(values):
        return " ".join(f"{pad + i * step:.1f},{height - pad - v / top * (height - 2 * pad):.1f}"
                        for i, v in enumerate(values))

    mean_before, mean_after = sum(before) / n, sum(after) / n
    return {"width": width, "height": height, "layers": n, "top": top, "unboosted": points(before),
            "boosted": points(after), "mean_unboosted": mean_before, "mean_boosted": mean_after,
            "label": (f"Attention on the instruction per layer: mean {mean_before:.3f} unboosted, "
                      f"{mean_after:.3f} boosted")}
