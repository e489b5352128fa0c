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


def sweep_chart(table: list[Mapping[str, Any]] | None, recommended: Mapping[str, Any] | None = None,
                floor: float = 1.0, width: int = 560, height: int = 240, pad: int = 34) -> dict | None:
    """Return an SVG plan of validation success (0-1) and fluency (0-2) against M, one pair of lines per setting.

    Both share the plot height (success on 0..100%, fluency on 0..2); the floor is a dashed line on the
    fluency scale; the recommended M is a shaded band. x positions follow the grid's order (evenly spaced).
    """
    rows = [r for r in (table or []) if r.get("split") == "validation"]
    if not rows:
        return None
    ms = sorted({float(r["multiplier"]) for r in rows})
    step = (width - 2 * pad) / max(len(ms) - 1, 1)
    x_of = {m: pad + i * step for i, m in enumerate(ms)}
    h = height - 2 * pad

    def y(frac: float) -> float:
        return round(height - pad - max(0.0, min(1.0, frac)) * h, 1)

    series = []
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for i, label in enumerate(settings):
        pts = sorted((float(r["multiplier"]), r) for r in rows if r["setting"] == label)
        succ = " ".join(f"{x_of[m]:.1f},{y(r['success'])}" for m, r in pts if r.get("success") is not None)
        flu = " ".join(f"{x_of[m]:.1f},{y(r['fluency'] / 2)}" for m, r in pts if r.get("fluency") is not None)
        dots = [{"x": round(x_of[m], 1), "ys": y(r["success"]), "yf": y(r["fluency"] / 2) if r.get("fluency")
                 is not None else None, "m": m, "success": r["success"], "fluency": r.get("fluency")}
                for m, r in pts if r.get("success") is not None]
        series.append({"label": label, "success": succ, "fluency": flu, "dots": dots, "index": i})
    band = None
    if recommended and recommended.get("multiplier") in x_of:
        x = x_of[recommended["multiplier"]]
        band = {"x": round(x - max(step, 16) / 2, 1), "width": round(max(step, 16), 1),
                "label": f"recommended M={recommended['multiplier']:g} ({recommended.get('setting', '')})"}
    ticks = [{"x": round(x_of[m], 1), "label": f"{m:g}"} for m in ms]
    return {"width": width, "height": height, "pad": pad, "series": series, "ticks": ticks, "band": band,
            "floor_y": y(floor / 2), "top": pad, "bottom": height - pad,
            "label": "Validation success and fluency against M" + (f"; {band['label']}" if band else "")}
