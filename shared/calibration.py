"""Calibration sweeps, the parts shared by ``instaboost calibrate`` (local) and the service's sweeps.

A sweep runs a case set at each M of a grid, per *setting* (a layer mode x a head fraction), and walks
the grid upward with the paper's stop rule (``shared.evaluation.protocol``): after each M, a setting
whose mean validation fluency fell below the floor stops; the sweep ends when every setting stopped or
the grid is done. M = 1 is the unboosted baseline, run once per case and shared by every setting.
This module is torch-free: the records, the stop decision and the text and CSV tables.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from shared.csvsafe import neutralize
from shared.errors import ValidationError
from shared.evaluation import protocol
from shared.evaluation.cases import PACKS_BY_NAME, Case, load_cases, load_pack, parse_cases, split
from shared.evaluation.checks import Check, IfevalCheck
from shared.fields import LAYER_MODES
from shared.requests.errors import raise_problems
from shared.requests.job import check_field
from shared.requests.sweep import CASE_FORMATS, SweepForm, SweepRequestBody, validate_sweep  # noqa: F401
from shared.requests.types import SCOPES
from shared.settings import Settings

TABLE_COLUMNS = ("setting", "multiplier", "split", "layers", "head_fraction", "scope", "target_mass",
                 "boilerplate_multiplier", "n",
                 "success", "success_lo", "success_hi",
                 "effective_success", "effective_success_lo", "effective_success_hi", "fluency",
                 "fluency_lo", "fluency_hi", "copy_rate", "deflection_rate", "repetition", "repetitive_rate",
                 "canned_rate", "empty_rate", "truncated_rate")


@dataclass(frozen=True)
class SweepSetting:
    """One boost setting a sweep calibrates: a layer mode, the share of heads boosted per layer, the scope, the
    target mass (None: a fixed M only) and the boilerplate's M (1: not de-boosted)."""

    layers: str
    head_fraction: float = 1.0
    scope: str = "all"
    target_mass: float | None = None
    boilerplate_multiplier: float = 1.0

    @property
    def label(self) -> str:
        return protocol.setting_label(self.layers, self.head_fraction, self.scope, self.target_mass,
                                      self.boilerplate_multiplier)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "head_fraction": self.head_fraction, "scope": self.scope,
                "target_mass": self.target_mass, "boilerplate_multiplier": self.boilerplate_multiplier}

    @property
    def cell_key(self) -> str:
        """Return what, besides M and head fraction, tells this setting's sweep jobs apart (jobs.sweep_setting)."""
        return cell_key(self.scope, self.target_mass, self.boilerplate_multiplier)


def cell_key(scope: str, target_mass: float | None, boilerplate_multiplier: float | None = 1.0) -> str:
    """Return a sweep job's scope, target mass and boilerplate M as one key: "" for today's boost (all, no target,
    boilerplate 1); a boilerplate M below 1 adds a third part, so the keys of jobs stored before stay as they were."""
    bm = 1.0 if boilerplate_multiplier is None else float(boilerplate_multiplier)
    if scope == "all" and target_mass is None and bm == 1.0:
        return ""
    key = f"{scope}|{'' if target_mass is None else format(float(target_mass), 'g')}"
    return key if bm == 1.0 else f"{key}|{bm:g}"


# The dimensions a sweep varies, in the order its table and CSV show them: (key, heading).
DIMENSIONS = (("layers", "Layers"), ("head_fraction", "Head fraction"), ("scope", "Scope"),
              ("target_mass", "Target mass"), ("boilerplate_multiplier", "Boilerplate M"))


def varying(settings: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Return the dimensions (key, heading) whose value differs between these settings (or table rows)."""
    rows = list(settings)
    return [(k, h) for k, h in DIMENSIONS if len({r.get(k, DEFAULTS[k]) for r in rows}) > 1]


DEFAULTS = {"layers": "all", "head_fraction": 1.0, "scope": "all", "target_mass": None, "boilerplate_multiplier": 1.0}


def dimension_text(value: Any, key: str) -> str:
    """Return a setting dimension's value as the sweep page shows it (its default where a row lacks it)."""
    value = DEFAULTS.get(key) if value is None and key != "target_mass" else value
    if key == "head_fraction":
        return f"{float(value) * 100:g}%"
    if key == "target_mass":
        return "none (fixed M)" if value is None else f"{float(value):g}"
    if key == "boilerplate_multiplier":
        return "1 (off)" if float(value) == 1.0 else f"{float(value):g}"
    return str(value)


def sweep_settings(layer_modes: Iterable[str] = ("all",), head_fractions: Iterable[float] = (1.0,),
                   scopes: Iterable[str] = ("all",), target_masses: Iterable[float | None] = (None,),
                   boilerplate_multipliers: Iterable[float] = (1.0,)) -> list[SweepSetting]:
    """Return every layer mode x head fraction x scope x target mass x boilerplate M, validated (modes in
    LAYER_MODES, fractions in (0, 1], scopes in SCOPES, target masses in (0, 1) or None, boilerplate Ms in (0, 1])."""
    layer_modes, head_fractions = list(layer_modes), list(head_fractions)
    scopes, target_masses, lows = list(scopes), list(target_masses), list(boilerplate_multipliers)
    errors = []
    for i, b in enumerate(lows):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
            errors.append({"field": f"boilerplate_multipliers[{i}]", "message": "a boilerplate multiplier is a "
                           f"number in (0, 1] (1 = off); got {str(b)[:40]!r}"})
    for i, sc in enumerate(scopes):
        if sc not in SCOPES:
            errors.append({"field": f"scopes[{i}]", "message": f"scope must be one of {', '.join(SCOPES)}; "
                           f"got {str(sc)[:40]!r}"})
    for i, p in enumerate(target_masses):
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1):
            errors.append({"field": f"target_masses[{i}]", "message": f"a target mass is a number in (0, 1) or "
                           f"none; got {str(p)[:40]!r}"})
    for i, m in enumerate(layer_modes):
        if not isinstance(m, str) or m not in LAYER_MODES:
            errors.append({"field": f"layer_modes[{i}]", "message": f"layer mode must be one of "
                           f"{', '.join(LAYER_MODES)}; got {str(m)[:40]!r}"})
    for i, f in enumerate(head_fractions):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            errors.append({"field": f"head_fractions[{i}]", "message": f"a head fraction is a number in (0, 1]; "
                           f"got {str(f)[:40]!r}"})
    modes = list(dict.fromkeys(m for m in layer_modes if isinstance(m, str)))
    fractions = list(dict.fromkeys(float(f) for f in head_fractions if isinstance(f, (int, float))))
    if not modes:
        errors.append({"field": "layer_modes", "message": "give at least one layer mode"})
    if not fractions:
        errors.append({"field": "head_fractions", "message": "give at least one head fraction"})
    if errors:
        raise ValidationError("; ".join(e["message"] for e in errors), errors=errors)
    scopes_ = list(dict.fromkeys(sc for sc in scopes if sc in SCOPES)) or ["all"]
    targets = list(dict.fromkeys(None if p is None else float(p) for p in target_masses)) or [None]
    bms = list(dict.fromkeys(float(b) for b in lows)) or [1.0]
    return [SweepSetting(m, f, sc, p, b) for b in bms for p in targets for sc in scopes_ for f in fractions
            for m in modes]


def boosted_grid(grid: Sequence[float]) -> list[float]:
    """Return the grid's multipliers above the baseline, ascending (M = 1 is the shared unboosted run)."""
    return [float(m) for m in sorted(set(grid)) if float(m) != 1.0]


def load_case_set(pack: str | None = None, cases_file: str | None = None, *, data: str | bytes | None = None,
                  fmt: str | None = None, source: str = "upload", max_text_chars: int = 20000) -> list[Case]:
    """Return the cases of a built-in pack, a case file, or uploaded text (exactly one of them)."""
    given = [x is not None for x in (pack, cases_file, data)]
    if sum(given) != 1:
        raise ValidationError("give exactly one case set: a built-in pack, a case file or uploaded cases",
                              field="cases")
    if pack is not None:
        return load_pack(pack)
    if cases_file is not None:
        return load_cases(cases_file, max_text_chars=max_text_chars)
    return parse_cases(data, fmt or "yaml", source=source, max_text_chars=max_text_chars)


def assign_splits(cases: Sequence[Case]) -> dict[str, str]:
    """Return {case name: "validation" | "test"} by the fixed split (pinned cases where they say)."""
    validation, test = split(list(cases))
    return {**{c.name: "validation" for c in validation}, **{c.name: "test" for c in test}}


def record(scores: Mapping[str, Any], *, case: str, split_: str, multiplier: float, setting: SweepSetting,
           job_id: int | None = None) -> dict[str, Any]:
    """Return one protocol record: a run's scores plus where it sits in the sweep."""
    return {**scores, "case": case, "split": split_, "multiplier": float(multiplier), "layers": setting.layers,
            "head_fraction": setting.head_fraction, "scope": setting.scope, "target_mass": setting.target_mass,
            "boilerplate_multiplier": setting.boilerplate_multiplier, "job_id": job_id}


def rescore_records(records: Sequence[Mapping], cases: Sequence[Case], *, max_new_tokens: int,
                    copy_words: int = 6) -> list[dict[str, Any]]:
    """Return records scored again by today's scorers from their stored output text and perplexity.

    For a records file of ``instaboost calibrate --records`` (each record carries ``output``): a scorer added
    since (deflection) then counts in the table without generating again. Records without text are kept as
    they were.
    """
    from shared.evaluation.scorers import score_output

    by_name = {c.name: c for c in cases}
    out = []
    for r in records:
        case = by_name.get(r.get("case"))
        if case is None or not isinstance(r.get("output"), str):
            out.append(dict(r))
            continue
        truncated = r.get("truncated")
        scores = score_output(r["output"], instruction=case.instruction, query=case.query, case=case,
                              perplexity=r.get("perplexity"), k=copy_words, max_new_tokens=max_new_tokens,
                              output_tokens=max_new_tokens if truncated else 0,
                              hit_eos=None if truncated is None else not truncated)
        out.append({**r, **scores})
    return out


def validation_stats(records: Sequence[Mapping], setting: SweepSetting) -> list[dict[str, Any]]:
    """Return one setting's per-M validation rows (success, fluency), the baseline (M = 1) included."""
    rows = protocol.summarize(records, n_boot=1)
    return [r for r in rows if r["split"] == "validation" and r["setting"] == setting.label]


def stopped(records: Sequence[Mapping], setting: SweepSetting, floor: float) -> bool:
    """Tell whether the stop rule ended this setting's walk up the grid (a fluency below the floor)."""
    stats = validation_stats(records, setting)
    return protocol.recommend(stats, floor)["stopped_at"] is not None


def still_going(records: Sequence[Mapping], settings: Sequence[SweepSetting], floor: float) -> list[SweepSetting]:
    """Return the settings whose walk continues after the Ms run so far."""
    return [s for s in settings if not stopped(records, s, floor)]


def result_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Return protocol.calibrate's result with the recommendation flattened: best setting, M, test success."""
    best = result.get("best")
    out = {"floor": result["floor"], "copy_ceiling": result.get("copy_ceiling"), "table": result["table"],
           "settings": result["settings"], "best": best, "recommended": None}
    if best:
        test, base = best.get("test") or {}, best.get("baseline_test") or {}
        out["recommended"] = {
            "multiplier": best["multiplier"], "layers": best["layers"], "head_fraction": best["head_fraction"],
            "scope": best.get("scope", "all"), "target_mass": best.get("target_mass"),
            "boilerplate_multiplier": best.get("boilerplate_multiplier", 1.0), "setting": best["setting"], "validation_success": best["success"],
            "validation_effective_success": best.get("effective_success"), "validation_fluency": best["fluency"],
            "validation_copy_rate": best.get("copy_rate"),
            "test_success": test.get("success"), "test_success_ci": [test.get("success_lo"), test.get("success_hi")],
            "test_effective_success": test.get("effective_success"),
            "test_effective_success_ci": [test.get("effective_success_lo"), test.get("effective_success_hi")],
            "test_fluency": test.get("fluency"), "test_copy_rate": test.get("copy_rate"),
            "test_deflection_rate": test.get("deflection_rate"),
            "test_n": test.get("n"), "baseline_test_success": base.get("success"),
            "baseline_test_effective_success": base.get("effective_success"),
            "reason": best["reason"]}
    return out


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x * 100:.0f}%" if pct else f"{x:.2f}"
    return str(x)


def _ci(lo: Any, hi: Any, pct: bool = False) -> str:
    if lo is None or hi is None:
        return ""
    return f" [{_fmt(lo, pct)}, {_fmt(hi, pct)}]"


def format_table(summary: Mapping[str, Any]) -> str:
    """Return the per-M table (validation and test side by side) and the recommendation as text."""
    lines = []
    best = summary.get("best") or {}
    by_key: dict[tuple[str, float], dict[str, dict]] = {}
    for row in summary["table"]:
        by_key.setdefault((row["setting"], row["multiplier"]), {})[row["split"]] = row

    def half(r: Mapping) -> str:
        strict = _fmt(r.get("success"), True) + _ci(r.get("success_lo"), r.get("success_hi"), True)
        eff = _fmt(r.get("effective_success"), True) + _ci(r.get("effective_success_lo"),
                                                           r.get("effective_success_hi"), True)
        return (f"{strict:>16} {eff:>16} {_fmt(r.get('fluency')):>4} {_fmt(r.get('copy_rate'), True):>4} "
                f"{_fmt(r.get('deflection_rate'), True):>4}")

    cols = f"{'strict':>16} {'effective':>16} {'flu':>4} {'copy':>4} {'defl':>4}"
    header = f"{'setting':<24} {'M':>5} | {'validation':<{len(cols)}} | test"
    sub = f"{'':<24} {'':>5} | {cols} | {cols}"
    lines += [header, sub, "-" * len(sub)]
    for (setting, m), parts in by_key.items():
        v, t = parts.get("validation", {}), parts.get("test", {})
        mark = " *" if best and setting == best.get("setting") and m == best.get("multiplier") else ""
        lines.append(f"{setting:<24} {m:>5g} | {half(v)} | {half(t)}{mark}")
    lines.append("")
    for s in summary["settings"]:
        lines.append(f"{s['setting']}: {s['reason']}")
    rec = summary.get("recommended")
    if rec:
        def gain(x: Any, base: Any) -> str:
            return (f", {x / base:.1f}x the unboosted {_fmt(base, True)}" if base and x is not None else
                    f" (unboosted: {_fmt(base, True)})")

        lines.append(
            f"recommended: M={rec['multiplier']:g}, setting {rec['setting']}; test effective success "
            f"{_fmt(rec.get('test_effective_success'), True)}"
            f"{_ci(*rec.get('test_effective_success_ci', [None, None]), pct=True)}"
            f"{gain(rec.get('test_effective_success'), rec.get('baseline_test_effective_success'))}, strict "
            f"{_fmt(rec['test_success'], True)}{_ci(*rec['test_success_ci'], pct=True)}"
            f"{gain(rec['test_success'], rec['baseline_test_success'])}; test fluency {_fmt(rec['test_fluency'])}, "
            f"copy rate {_fmt(rec['test_copy_rate'], True)}, deflection rate "
            f"{_fmt(rec.get('test_deflection_rate'), True)} (n={rec['test_n']}, * in the table)")
    else:
        lines.append("recommended: none (no setting has an M at or above the fluency floor with a success rate)")
    return "\n".join(lines)


def table_csv(summary: Mapping[str, Any]) -> str:
    """Return the per-(setting, M, split) table as CSV text: a column per setting dimension (layers, head fraction,
    scope, target mass, boilerplate M; empty target mass: a fixed M only) and a recommended column (formulas
    neutralized)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*TABLE_COLUMNS, "recommended"])
    best = summary.get("best") or {}
    for row in summary["table"]:
        rec = bool(best) and row["setting"] == best.get("setting") and row["multiplier"] == best.get("multiplier")
        # Rows stored before scope (or the boilerplate M) was a dimension lack them.
        row = {"head_fraction": 1.0, "scope": "all", **row}
        row["boilerplate_multiplier"] = row.get("boilerplate_multiplier") or 1.0
        w.writerow([neutralize(c) for c in (*(row.get(c) for c in TABLE_COLUMNS), rec)])
    return buf.getvalue()


# -- the sweep request (API body or form): declared in shared.requests.sweep -------------------------------------

SWEEP_JOB_FIELDS = SweepRequestBody.JOB_FIELDS
API_SWEEP_KEYS = tuple(SweepRequestBody.model_fields)
SWEEP_KEYS = tuple(SweepForm.model_fields)
SOURCE_KEYS = ("pack", "cases", "cases_text", "cases_format", "limit")


@dataclass(frozen=True)
class SweepRequest:
    cases: tuple[Case, ...]
    pack: str | None
    grid: tuple[float, ...]
    settings: tuple[SweepSetting, ...]
    floor: float
    params: dict


def _cases(source: Mapping[str, Any], settings: Settings) -> list[Case]:
    """Return a validated case set's cases: its pack's, its own, or the uploaded file's (raises ValidationError)."""
    if source.get("pack") is not None:
        return load_case_set(pack=source["pack"])
    if source.get("cases") is not None:
        return [Case(name, c.instruction, c.query, c.description or "",
                     tuple(Check(x["type"], x.get("value")) for x in c.checks),
                     tuple(IfevalCheck(x["id"], x["kwargs"]) for x in c.ifeval), c.split)
                for name, c in source["cases"].items()]
    return parse_cases(source["cases_text"], source.get("cases_format") or "yaml", source="cases_text",
                       max_text_chars=settings.limits.max_text_chars)


def _load_errors(source: Mapping[str, Any], settings: Settings) -> list[dict]:
    """Return the problems of reading a validated case set."""
    try:
        _cases(source, settings)
    except ValidationError as exc:
        return exc.errors or [{"field": exc.field or "cases", "message": exc.message}]
    return []


def parse_sweep_request(data: Any, settings: Settings, strict: bool = True) -> SweepRequest:
    """Validate a sweep request (JSON body or form); raise one ValidationError listing every problem."""
    req, errors = validate_sweep(data, settings, strict)
    given = [k for k in ("pack", "cases", "cases_text") if isinstance(data, Mapping) and data.get(k) is not None
             and (strict or data.get(k) != "") and (k != "cases_text" or not strict)]
    if len(given) != 1:
        errors.insert(len([e for e in errors if e["message"].startswith("unknown field")]), {
            "field": "pack", "message": "give exactly one case set: pack (a built-in pack: " + ", ".join(PACKS_BY_NAME)
            + "), cases (a list of case objects) or cases_text (a YAML, JSON or JSONL case file)"})
    cases: list[Case] = []
    if req is None and len(given) == 1 and not any(e["field"].split(".")[0].split("[")[0] in SOURCE_KEYS
                                                   for e in errors):
        # Another field is wrong: still read the case set, so one answer lists its problems too.
        model = SweepRequestBody if strict else SweepForm
        errors += _load_errors({k: check_field(k, data.get(k), settings, strict, model=model)[0]
                                for k in SOURCE_KEYS if k in model.model_fields}, settings)
    if req is not None and len(given) == 1:
        try:
            cases = _cases({k: getattr(req, k, None) for k in SOURCE_KEYS}, settings)[:req.limit]
        except ValidationError as exc:
            errors += exc.errors or [{"field": exc.field or "cases", "message": exc.message}]
        if cases and len(cases) < 2:
            errors.append({"field": "cases", "message": "a sweep needs at least 2 cases (a validation and a test half)"})
        errors += req.dimension_problems(data)
        groups = (len(req.head_fractions) * len(req.swept_scopes()) * len(req.swept_target_masses())
                  * len(req.swept_boilerplate_multipliers()))
        per_stage = len(cases) * groups
        cap = settings.limits.max_queued_jobs
        if cases and per_stage > cap:
            errors.append({"field": "cases", "message": f"one step of this sweep is {per_stage} jobs ({len(cases)} cases "
                           f"x {groups} head fraction, scope, target mass and boilerplate settings); at most {cap} may wait in the "
                           "queue: use limit, or sweep fewer values"})
    raise_problems(errors, "invalid sweep request")
    return SweepRequest(tuple(cases), req.pack, req.grid,
                        tuple(sweep_settings(req.layer_modes, req.head_fractions, req.swept_scopes(),
                                             req.swept_target_masses(), req.swept_boilerplate_multipliers())),
                        req.fluency_floor, req.job_params())
