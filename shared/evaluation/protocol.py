"""The paper's calibration protocol as pure functions: grids, stop rule and choice of M, bootstrap CIs, summary.

Protocol (Guardieiro et al., 2025), the default here:

1. Run every case of a pack at each M of the grid 1, 3, 5, ..., 19 (``PAPER_GRID``), per setting
   (layer mode x head fraction). The unboosted run (M = 1) is the same for every setting, so a setting
   without M = 1 runs of its own shares another setting's.
2. On the validation half, walk the grid upward and stop going up at the first M whose mean fluency
   is below the floor (default 1.0 of 2): that M and every larger one are out, even if fluency recovers.
3. Recommend the M with the highest validation *effective* success among the Ms before the stop whose
   validation copy rate is at most the copy ceiling (default 5%; M = 1 is always eligible), ties to the
   smaller M; across settings, the highest again (ties: smaller M, then the setting listed first).
   Effective success counts a run that follows the checks and neither copies the instruction (``copied``)
   nor deflects (``deflected``, or ``canned`` in records scored before deflections were); strict success
   counts every run that follows the checks. The paper recommends by strict success: a boost that makes
   the model recite or talk about the instruction passes many checks ("answer in lowercase") without
   answering the query, so strict success rewards exactly the harm a large M does.
4. Report that M's strict and effective success on the test half with bootstrap 95% confidence intervals.

Records are plain dicts, one per run: a run's score dict (``score_output``) plus ``multiplier``,
``layers`` ("all", "middle" or any label), ``split`` ("validation" or "test") and optionally
``head_fraction`` (default 1.0) and ``case``. Success is the mean of a bool key (``follows`` by default;
``follows_loose`` or ``judge_follows`` work too) over records where it is not None; fluency likewise
(``fluency`` or ``judge_fluency``).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from shared.errors import ValidationError

SPLITS = ("validation", "test")
FLOOR = 1.0
COPY_CEILING = 0.05
LEVEL = 0.95
N_BOOT = 2000
PAPER_GRID: tuple[float, ...] = tuple(float(m) for m in range(1, 20, 2))
DEFAULT_GRID = PAPER_GRID


def log_grid(lo: float = 1.0, hi: float = 20.0, n: int = 10) -> tuple[float, ...]:
    """Return n log-spaced multipliers from lo to hi, each rounded to 2 significant digits."""
    if not (0 < lo < hi) or n < 2:
        raise ValidationError(f"a log grid needs 0 < lo < hi and n >= 2, got lo={lo}, hi={hi}, n={n}", field="grid")
    raw = (lo * (hi / lo) ** (i / (n - 1)) for i in range(n))
    return tuple(dict.fromkeys(float(f"{m:.2g}") for m in raw))


LOG_GRID = log_grid()  # 1, 1.4, 1.9, 2.7, 3.8, 5.3, 7.4, 10, 14, 20
GRIDS: dict[str, tuple[float, ...]] = {"paper": PAPER_GRID, "log": LOG_GRID}


def get_grid(grid: str | Iterable[float] = "paper") -> tuple[float, ...]:
    """Return a named grid ("paper", "log") or validate explicit multipliers (> 0, finite), sorted and unique."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValidationError(f"unknown grid {grid!r}; use {' or '.join(GRIDS)}, or a list of multipliers",
                                  field="grid")
        return GRIDS[grid]
    values = list(grid)
    bad = [m for m in values
           if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0]
    if bad or not values:
        raise ValidationError(f"a grid is a non-empty list of multipliers > 0; bad values: {bad}", field="grid")
    return tuple(sorted({float(m) for m in values}))


def bootstrap_ci(values: Iterable[float | bool], *, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Return the percentile bootstrap CI of the mean (seeded; (None, None) for no values)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return None, None
    rnd = random.Random(seed).random  # random() is reproducible across Python versions; choices() is not promised
    means = sorted(sum(vals[int(rnd() * n)] for _ in range(n)) / n for _ in range(n_boot))
    alpha = (1 - level) / 2
    lo = means[int(math.floor(alpha * n_boot))]
    hi = means[min(n_boot - 1, int(math.ceil((1 - alpha) * n_boot)) - 1)]
    return lo, hi


def _setting(r: Mapping) -> tuple[str, float, str, float | None, float]:
    target = r.get("target_mass")
    return (str(r["layers"]), float(r.get("head_fraction", 1.0)), str(r.get("scope") or "all"),
            None if target is None else float(target), float(r.get("boilerplate_multiplier") or 1.0))


def setting_label(layers: str, head_fraction: float = 1.0, scope: str = "all", target_mass: float | None = None,
                  boilerplate_multiplier: float | None = 1.0) -> str:
    """Return a setting's display name, e.g. 'middle', 'middle, 50% heads', 'all, generated, target 0.3' or
    'all, boilerplate 0.5' (records stored before the boilerplate M lack it: 1, off)."""
    bm = 1.0 if boilerplate_multiplier is None else float(boilerplate_multiplier)
    parts = [layers, *([f"{head_fraction * 100:g}% heads"] if head_fraction != 1.0 else []),
             *([scope] if scope != "all" else []), *([f"target {target_mass:g}"] if target_mass is not None else []),
             *([f"boilerplate {bm:g}"] if bm != 1.0 else [])]
    return ", ".join(parts)


def _check_records(records: Sequence[Mapping]) -> None:
    errors = []
    for i, r in enumerate(records):
        m = r.get("multiplier")
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            errors.append({"field": f"records[{i}].multiplier", "message": f"record {i}: multiplier must be > 0"})
        if r.get("split") not in SPLITS:
            errors.append({"field": f"records[{i}].split", "message": f"record {i}: split must be validation or test"})
        if not isinstance(r.get("layers"), str):
            errors.append({"field": f"records[{i}].layers", "message": f"record {i}: layers must be a layer-mode name"})
    if errors:
        raise ValidationError(f"{len(errors)} bad records: " + "; ".join(e["message"] for e in errors[:10]),
                              errors=errors)


def _by_setting(records: Sequence[Mapping]) -> dict[tuple[str, float, str, float | None, float], list[Mapping]]:
    """Group records by setting, in first-seen order; settings without M = 1 runs share the first setting's."""
    groups: dict[tuple[str, float, str, float | None, float], list[Mapping]] = defaultdict(list)
    for r in records:
        groups[_setting(r)].append(r)
    boosted = [s for s, rs in groups.items() if any(r["multiplier"] != 1 for r in rs)] or list(groups)
    baseline = next(([r for r in rs if r["multiplier"] == 1] for rs in groups.values()
                     if any(r["multiplier"] == 1 for r in rs)), [])
    return {s: groups[s] if any(r["multiplier"] == 1 for r in groups[s]) else groups[s] + baseline for s in boosted}


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def deflected(r: Mapping) -> bool | None:
    """Tell whether a record deflected (records scored before the deflection scorer: canned)."""
    return r["deflected"] if r.get("deflected") is not None else r.get("canned")


def effective(r: Mapping, success: str = "follows") -> bool | None:
    """Return a record's effective success: success, not copied, not deflected, not a loop (None without success)."""
    if r.get(success) is None:
        return None
    return bool(r[success]) and not r.get("copied") and not deflected(r) and not r.get("repetitive")


def summarize(records: Sequence[Mapping], *, success: str = "follows", fluency: str = "fluency",
              level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """Return one row per (setting, M, split): n, strict and effective success and fluency with CIs, rates."""
    _check_records(records)
    rows = []
    for (layers, hf, scope, target, bm), rs in _by_setting(records).items():
        cells: dict[tuple[float, str], list[Mapping]] = defaultdict(list)
        for r in rs:
            cells[(float(r["multiplier"]), r["split"])].append(r)
        for (m, part) in sorted(cells, key=lambda key: (key[0], SPLITS.index(key[1]))):
            cell = cells[(m, part)]
            ok = [bool(r[success]) for r in cell if r.get(success) is not None]
            eff = [e for e in (effective(r, success) for r in cell) if e is not None]
            defl = [bool(d) for d in (deflected(r) for r in cell) if d is not None]
            flu = [float(r[fluency]) for r in cell if r.get(fluency) is not None]

            def rate(key: str) -> float | None:
                return _round(_mean([bool(r[key]) for r in cell if r.get(key) is not None]))

            s_lo, s_hi = bootstrap_ci(ok, level=level, n_boot=n_boot, seed=seed)
            e_lo, e_hi = bootstrap_ci(eff, level=level, n_boot=n_boot, seed=seed)
            f_lo, f_hi = bootstrap_ci(flu, level=level, n_boot=n_boot, seed=seed)
            rows.append({
                "setting": setting_label(layers, hf, scope, target, bm), "layers": layers, "head_fraction": hf,
                "scope": scope, "target_mass": target, "boilerplate_multiplier": bm, "multiplier": m,
                "split": part, "n": len(cell), "success": _round(_mean(ok)), "success_lo": _round(s_lo),
                "success_hi": _round(s_hi), "effective_success": _round(_mean(eff)),
                "effective_success_lo": _round(e_lo), "effective_success_hi": _round(e_hi),
                "fluency": _round(_mean(flu)), "fluency_lo": _round(f_lo),
                "fluency_hi": _round(f_hi), "copy_rate": rate("copied"), "repetitive_rate": rate("repetitive"),
                "repetition": _round(_mean([float(r["repeated_ngram_share"]) for r in cell
                                            if r.get("repeated_ngram_share") is not None])),
                "deflection_rate": _round(_mean(defl)),
                "canned_rate": rate("canned"), "empty_rate": rate("empty"), "truncated_rate": rate("truncated"),
            })
    return rows


def _score(row: Mapping) -> float | None:
    """Return the success a recommendation ranks by: effective where the row has it, else strict."""
    return row["effective_success"] if "effective_success" in row else row.get("success")


def recommend(stats: Sequence[Mapping], floor: float = FLOOR, copy_ceiling: float | None = None) -> dict[str, Any]:
    """Apply the stop rule and choice to one setting's per-M validation stats.

    stats: {multiplier, success, fluency} and optionally effective_success and copy_rate (summarize's rows).
    Ranks by effective success where given (else strict); with copy_ceiling, an M > 1 whose copy rate is
    above it is passed over (the walk goes on: copying is not a fluency stop).
    """
    considered, stopped_at, stop_fluency, too_copied = [], None, None, []
    for row in sorted(stats, key=lambda r: r["multiplier"]):
        if row.get("fluency") is None or row["fluency"] < floor:
            stopped_at, stop_fluency = row["multiplier"], row.get("fluency")
            break
        if (copy_ceiling is not None and row["multiplier"] != 1 and row.get("copy_rate") is not None
                and row["copy_rate"] > copy_ceiling):
            too_copied.append(row)
            continue
        considered.append(row)
    ranked = [r for r in considered if _score(r) is not None]
    best = min(ranked, key=lambda r: (-_score(r), r["multiplier"])) if ranked else None
    if stopped_at is None:
        stop = "fluency stayed at or above the floor on the whole grid"
    elif stop_fluency is None:
        stop = f"M={stopped_at:g} has no fluency scores, so the walk stops there"
    else:
        stop = (f"M={stopped_at:g} fell below the fluency floor ({stop_fluency:.3g} < {floor:g}), so the walk "
                f"stops there")
    if too_copied:
        over = ", ".join(f"{r['multiplier']:g}" for r in too_copied)
        stop += f"; M={over} copied the instruction too often (copy rate above {copy_ceiling:.0%})"
    kind = "effective" if best is not None and "effective_success" in best else "validation"
    if best is None:
        why = "no M before the stop has a success rate" if considered else "no M is at or above the fluency floor"
        reason = f"no recommendation: {why}; {stop}"
    else:
        tried = ", ".join(f"{r['multiplier']:g}" for r in considered)
        what = "validation effective success" if kind == "effective" else "validation success"
        reason = f"M={best['multiplier']:g} has the highest {what} ({_score(best):.3g}) among M={tried}; {stop}"
    return {"multiplier": best["multiplier"] if best else None, "success": best["success"] if best else None,
            "effective_success": best.get("effective_success") if best else None,
            "fluency": best["fluency"] if best else None, "copy_rate": best.get("copy_rate") if best else None,
            "considered": [r["multiplier"] for r in considered],
            "over_copy_ceiling": [r["multiplier"] for r in too_copied], "stopped_at": stopped_at, "reason": reason}


def next_multiplier(grid: Sequence[float], validation_stats: Sequence[Mapping], floor: float = FLOOR) -> float | None:
    """Return the next grid M a sweep should run, or None once the grid is done or fluency fell below the floor."""
    done = {float(r["multiplier"]) for r in validation_stats}
    if recommend(validation_stats, floor)["stopped_at"] is not None:
        return None
    return next((float(m) for m in sorted(grid) if float(m) not in done), None)


def calibrate(records: Sequence[Mapping], *, floor: float = FLOOR, copy_ceiling: float | None = COPY_CEILING,
              success: str = "follows", fluency: str = "fluency", level: float = LEVEL, n_boot: int = N_BOOT,
              seed: int = 0) -> dict[str, Any]:
    """Run the protocol on stored runs: the summary table, a recommendation per setting and overall, test results."""
    table = summarize(records, success=success, fluency=fluency, level=level, n_boot=n_boot, seed=seed)
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for row in table:
        by_setting[row["setting"]].append(row)
    settings = []
    for label, rows in by_setting.items():
        pick = recommend([r for r in rows if r["split"] == "validation"], floor, copy_ceiling)
        test = {r["multiplier"]: r for r in rows if r["split"] == "test"}
        settings.append({"setting": label, "layers": rows[0]["layers"], "head_fraction": rows[0]["head_fraction"],
                         "scope": rows[0]["scope"], "target_mass": rows[0]["target_mass"],
                         "boilerplate_multiplier": rows[0]["boilerplate_multiplier"],
                         **pick, "test": test.get(pick["multiplier"]), "baseline_test": test.get(1.0)})
    picked = [s for s in settings if s["multiplier"] is not None]
    best = min(picked, key=lambda s: (-_score(s), s["multiplier"], settings.index(s))) if picked else None
    return {"floor": floor, "copy_ceiling": copy_ceiling, "success_key": success, "fluency_key": fluency, "level": level, "table": table,
            "settings": settings, "best": best}
